"""The OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

Thin: the routes declare the API (OpenAPI bodies) and delegate to the request path in
`service.proxy` (docs/architecture.md, "Request path"); `ProxyFastPath` serves the two
completion routes without FastAPI's routing, calling the same `complete`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service.auth import Principal, authenticate
from service.model_list import list_models as model_list
from service.proxy import CHAT, COMPLETIONS, complete, dumps
from service.services import Services

__all__ = ["router"]

router = APIRouter(tags=["OpenAI-compatible"])

_CALIBRATION_SCHEMA = {
    "type": "object",
    "description": "Optional. How to calibrate this response (removed before forwarding).",
    "properties": {
        "options": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "idk_option": {"type": "string"},
        "mode": {"type": "string", "enum": ["options", "sequence"]},
        "abstain": {"type": "string", "enum": ["annotate", "replace", "off"]},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1},
        "task": {"type": "string", "default": "default"},
        "add_idk_option": {"type": "boolean", "description": "Add an 'I don't know' choice."},
        "idk_text": {"type": "string", "description": "How the added choice reads."},
        "scoring": {
            "type": "string",
            "enum": ["path", "likelihood"],
            "description": "Options mode: read the option distribution off the generated tokens "
            "(path) or score every option's text after the prompt (likelihood, one extra request).",
        },
    },
}


def _body_doc(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": required,
        "additionalProperties": True,
        "properties": {
            "model": {"type": "string"},
            "stream": {"type": "boolean", "default": False},
            **properties,
            "calibration": _CALIBRATION_SCHEMA,
        },
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_CHAT_DOC = _body_doc(
    ["model", "messages"],
    {
        "messages": {"type": "array", "items": {"type": "object"}},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    },
)
_COMPLETIONS_DOC = _body_doc(
    ["model", "prompt"],
    {
        "prompt": {"anyOf": [{"type": "string"}, {"type": "array"}]},
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    },
)


@router.post("/v1/chat/completions", openapi_extra=_CHAT_DOC, summary="Chat completion")
async def chat_completions(
    request: Request, principal: Principal = Depends(authenticate)
) -> Response:
    """OpenAI chat completion, forwarded to the engine, with a `calibration` object added."""
    return await complete(request, principal, CHAT)


@router.post("/v1/completions", openapi_extra=_COMPLETIONS_DOC, summary="Text completion")
async def completions(request: Request, principal: Principal = Depends(authenticate)) -> Response:
    """Legacy text completion, forwarded to the engine, with a `calibration` object added."""
    return await complete(request, principal, COMPLETIONS)


@router.get("/v1/models", summary="List models")
async def list_models(request: Request, _: Principal = Depends(authenticate)) -> Response:
    """The models clients can use: configured names (a `served_name` mapped back), the global
    upstream's other models, and every configured model (see `service.model_list`)."""
    services: Services = request.app.state.services
    body = await model_list(services.upstream, services.settings)
    return Response(dumps(body), media_type="application/json")
