"""The OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

One request, start to end (DESIGN §1):

1. read the body (size-capped by `BodyLimitMiddleware`), parse it once into a dict, check the
   fields we touch (`request_body`), validate image data URLs (`images`);
2. pick the profile for (model, task) and resolve the calibration plan (`calibration_request`);
3. rewrite: logprobs the calibrators need, the system prompt, the upstream's model name
   (`shaping`);
4. forward with the pooled client (`upstream`), streaming or not (`streaming`);
5. score + calibrate + abstain (`confidence`), trim logprobs back to the client's wish, attach
   `calibration` and the `x-calibration-*` headers; record the prediction behind the response.

Every choice is scored, calibrated and recorded on its own (`choices[i].calibration`, its own
feedback id; `service.choices`); the top-level `calibration` is choice 0's, and `replace`
withholds each abstaining choice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from service import metrics
from service.auth import Principal, authenticate
from service.calibration_request import CalibrationPlan, parse_calibration, resolve_plan
from service.choices import (
    choice_id,
    choice_index,
    echoed_count,
    echoed_prompts,
    generated_completion,
    generated_text,
)
from service.confidence import Outcome, calibrate_choice, no_choice_outcome
from service.errors import APIError
from service.idk_option import insert_in_messages, insert_in_prompt
from service.images import validate_image_parts
from service.model_list import list_models as model_list
from service.option_likelihood import option_likelihoods_result, start_option_likelihoods
from service.request_body import (
    LogprobWish,
    check_chat,
    check_completions,
    check_content_type,
    parse_json_body,
)
from service.settings import ModelConfig, Settings
from service.shaping import (
    inject_chat_logprobs,
    inject_completion_logprobs,
    inject_system_prompt,
    prefix_prompt,
    trim_chat_body,
    trim_chat_choice,
    trim_completion_choice,
    withhold_chat,
    withhold_completion,
)
from service.store import PredictionRecord
from service.streaming import StreamContext, relay
from service.upstream import error_kind

__all__ = ["complete", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["OpenAI-compatible"])

# Bodies above this size are parsed and checked in a worker thread, not on the event loop.
_OFFLOAD_BYTES = 256 * 1024

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


def _dumps(obj: Any) -> bytes:
    """Compact JSON; falls back to ASCII escapes if a string holds a lone surrogate."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def _dumps_request(obj: Any) -> bytes:
    """The upstream body. JSON escapes can smuggle in lone surrogates, which are not text."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise APIError(
            400, "The request contains an invalid Unicode escape (a lone surrogate)."
        ) from None


def _prompt_hash(model: str, prompt: Any) -> str:
    """sha256 of (model, the client's prompt/messages) before any injection; groups repeats."""
    digest = hashlib.sha256(model.encode())
    digest.update(b"\0")
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    digest.update(text.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


@dataclass(slots=True)
class _Prepared:
    """A checked and rewritten request, ready for the upstream."""

    legacy: bool
    model: str
    config: ModelConfig
    wish: LogprobWish
    plan: CalibrationPlan
    profile: Any
    stream: bool
    content: bytes  # the upstream body, serialized once
    prompt_hash: str
    request_content: Any
    n: int = 1  # choices per prompt
    echoed: tuple[str | int | None, ...] | None = None  # what vLLM echoes (service.choices)


def _check_and_rewrite(
    raw: bytes, legacy: bool, settings: Settings
) -> tuple[dict[str, Any], str, LogprobWish, Any]:
    """Parse + validate (pure CPU; runs in a thread for big bodies)."""
    body = parse_json_body(raw)
    if legacy:
        model, wish = check_completions(body)
        prompt = body["prompt"]
    else:
        model, wish = check_chat(body)
        validate_image_parts(body["messages"])
        prompt = body["messages"]
    return body, model, wish, prompt


async def _prepare(request: Request, legacy: bool) -> _Prepared:
    settings: Settings = request.app.state.settings
    check_content_type(request.headers.get("content-type"))
    raw = await request.body()
    if len(raw) > _OFFLOAD_BYTES:
        body, model, wish, prompt = await asyncio.to_thread(
            _check_and_rewrite, raw, legacy, settings
        )
        prompt_hash = await asyncio.to_thread(_prompt_hash, model, prompt)
    else:
        body, model, wish, prompt = _check_and_rewrite(raw, legacy, settings)
        prompt_hash = _prompt_hash(model, prompt)

    wanted = parse_calibration(body.pop("calibration", None))
    config = settings.model_settings(model)
    profile = await request.app.state.profiles.get(model, wanted.task)
    plan = resolve_plan(wanted, profile, config)

    # Sequence mode needs only the sampled tokens' logprobs: don't make the engine compute top-K.
    k = config.top_logprobs if plan.mode == "options" else 0
    system_prompt = getattr(profile, "system_prompt", None) or config.system_prompt
    shown = _show_idk(prompt, plan, legacy)
    if legacy:
        inject_completion_logprobs(body, wish, k)
        body["prompt"] = prefix_prompt(shown, system_prompt, config.system_prompt_policy)
    else:
        inject_chat_logprobs(body, wish, k)
        body["messages"] = inject_system_prompt(shown, system_prompt, config.system_prompt_policy)
    body["model"] = config.served_name or model
    echoed = echoed_prompts(body, legacy)

    return _Prepared(
        legacy=legacy,
        model=model,
        config=config,
        wish=wish,
        plan=plan,
        profile=profile,
        stream=bool(body.get("stream")),
        content=_dumps_request(body),
        prompt_hash=prompt_hash,
        request_content=(
            {"prompt" if legacy else "messages": prompt} if settings.store_request_content else None
        ),
        n=body.get("n") or 1,
        echoed=echoed,
    )


def _show_idk(prompt: Any, plan: CalibrationPlan, legacy: bool) -> Any:
    """The client's prompt/messages with the IDK choice the gateway added (docs/idk.md)."""
    if not plan.idk_added or plan.options is None or plan.idk_option is None:
        return prompt
    listed, label, text = plan.options[:-1], plan.idk_option, plan.idk_text or plan.idk_option
    if legacy:
        return insert_in_prompt(prompt, listed, label, text)
    return insert_in_messages(prompt, listed, label, text)


def _submit(request: Request, principal: Principal, prep: _Prepared, cid: str, out: Outcome):
    """Hand the prediction to the write-behind writer (never blocks, never fails the response)."""
    record = PredictionRecord(
        id=cid,
        model=prep.model,
        task=prep.plan.task,
        tenant=principal.tenant,
        mode=prep.plan.mode,
        options=list(prep.plan.options) if prep.plan.options else None,
        idk_option=prep.plan.idk_option,
        answer=out.answer,
        raw_confidence=out.raw_confidence,
        confidence=out.confidence,
        features=out.features,
        profile_version=out.profile_version,
        prompt_hash=prep.prompt_hash,
        abstained=out.abstained,
        abstain_reason=out.abstain_reason,
        request_content=prep.request_content,
    )
    try:
        request.app.state.writer.submit(record)
    except Exception:  # a full buffer or a closed writer must not turn a good answer into a 500
        logger.exception("could not queue prediction %s for the store", cid)
    task = prep.plan.task
    metrics.observe_prediction(prep.model, task, prep.plan.mode)
    metrics.observe_confidence(prep.model, task, out.raw_confidence, out.confidence)
    if out.abstain_reason is not None:
        metrics.observe_abstention(prep.model, task, out.abstain_reason)


def _headers(cid: str, out: Outcome) -> dict[str, str]:
    return {
        "x-calibration-id": cid,
        "x-calibration-confidence": "null" if out.confidence is None else repr(out.confidence),
        "x-calibration-abstained": "true" if out.abstained else "false",
    }


def _observe_failure(
    model: str | None, endpoint: str, error: APIError, total_s: float, upstream_s: float | None
) -> None:
    kind = error_kind(error)
    if kind is not None:
        metrics.observe_upstream_error(model, kind)
    metrics.observe_request(model, endpoint, error.status, total_s, upstream_s)


async def complete(request: Request, principal: Principal, legacy: bool) -> Response:
    """Serve one (chat) completion end to end; shared by the routes below and `ProxyFastPath`."""
    endpoint = "/v1/completions" if legacy else "/v1/chat/completions"
    clock = time.perf_counter
    started = clock()
    prep: _Prepared | None = None
    upstream_s: float | None = None
    likelihoods = None  # scoring "likelihood": the options scored next to this request
    try:
        prep = await _prepare(request, legacy)
        upstream = request.app.state.upstream
        path = "completions" if legacy else "chat/completions"
        target = upstream.target(prep.config)  # base URL + this upstream's key
        likelihoods = start_option_likelihoods(upstream, target, prep.plan, prep.content, legacy)
        t0 = clock()
        try:
            if prep.stream:
                stream = await upstream.open_stream(target, path, prep.content)
            else:
                reply = await upstream.post_json(target, path, prep.content)
        finally:
            upstream_s = clock() - t0
        if prep.stream:
            return _stream(
                request, principal, prep, stream, endpoint, started, upstream_s, likelihoods
            )
        option_lps = await option_likelihoods_result(likelihoods)
        response = _finish(request, principal, prep, reply.body, legacy, option_lps)
    except APIError as error:
        if likelihoods is not None:
            likelihoods.cancel()
        _observe_failure(
            prep.model if prep else None, endpoint, error, clock() - started, upstream_s
        )
        raise
    metrics.observe_request(prep.model, endpoint, 200, clock() - started, upstream_s)
    return response


def _stream(
    request: Request,
    principal: Principal,
    prep: _Prepared,
    upstream_response: Any,
    endpoint: str,
    started: float,
    upstream_s: float,
    likelihoods: Any = None,
) -> StreamingResponse:
    def on_done(
        outcomes: list[tuple[str, Outcome]] | None, waited: float, error: APIError | None
    ) -> None:
        total = time.perf_counter() - started
        if error is not None:
            kind = error_kind(error)
            if kind is not None:
                metrics.observe_upstream_error(prep.model, kind)
        for cid, out in outcomes or ():
            _submit(request, principal, prep, cid, out)
        # The status line (200) is long gone; the request counts as 200 either way.
        metrics.observe_request(prep.model, endpoint, 200, total, waited)

    ctx = StreamContext(
        legacy=prep.legacy,
        wish=prep.wish,
        plan=prep.plan,
        profile=prep.profile,
        model=prep.model,
        rename=prep.config.served_name not in (None, prep.model),
        on_done=on_done,
        n=prep.n,
        echoed=prep.echoed,
        likelihoods=likelihoods,
    )
    return StreamingResponse(
        relay(upstream_response, ctx, upstream_s),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _finish(
    request: Request,
    principal: Principal,
    prep: _Prepared,
    body: Any,
    legacy: bool,
    option_lps: list[float] | None = None,
) -> Response:
    """Calibrate a complete upstream body, shape it for the client, record the predictions."""
    if not isinstance(body, dict):
        raise APIError(
            502,
            "The upstream engine returned JSON that is not an object.",
            code="upstream_bad_body",
        )
    cid = body.get("id") if isinstance(body.get("id"), str) and body.get("id") else None
    if cid is None:
        cid = f"calib-{uuid.uuid4().hex}"
        body["id"] = cid

    choices = body.get("choices")
    scored: list[tuple[str, Outcome, dict[str, Any]]] = []
    for position, choice in enumerate(choices if isinstance(choices, list) else ()):
        if isinstance(choice, dict):
            scored.append(_finish_choice(cid, position, choice, prep, legacy, option_lps))
    if not legacy:
        trim_chat_body(body, prep.wish)
    if prep.config.served_name not in (None, prep.model):
        body["model"] = prep.model
    if scored:
        scored.sort(key=lambda item: item[2]["id"] != cid)  # choice 0's first
        outcome, public = scored[0][1], scored[0][2]
    else:
        outcome = no_choice_outcome(prep.plan, prep.profile)
        public = outcome.public(cid)
        scored.append((cid, outcome, public))
    body["calibration"] = public

    for choice_cid, choice_outcome, _ in scored:
        _submit(request, principal, prep, choice_cid, choice_outcome)
    return Response(
        _dumps(body), media_type="application/json", headers=_headers(public["id"], outcome)
    )


def _finish_choice(
    cid: str,
    position: int,
    choice: dict[str, Any],
    prep: _Prepared,
    legacy: bool,
    option_lps: list[float] | None,
) -> tuple[str, Outcome, dict[str, Any]]:
    """Score one choice (only what the model generated), withhold or trim it, attach its
    `calibration`."""
    index = choice_index(choice, position)
    echoed = None
    if prep.echoed is not None:
        prompt = index // prep.n if legacy else 0
        echoed = prep.echoed[prompt] if prompt < len(prep.echoed) else None
    if legacy:
        entries = choice.get("prompt_logprobs")
        n_prompt = None
        if prep.echoed is not None:  # one prompt_logprobs entry per prompt token
            n_prompt = len(entries) if isinstance(entries, list) else echoed_count(echoed)
        logprobs, text = generated_completion(
            choice.get("logprobs"), choice.get("text"), n_prompt, echoed
        )
    else:
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        logprobs, text = choice.get("logprobs"), generated_text(content, echoed)
    outcome = calibrate_choice(
        logprobs, text, prep.plan, prep.profile, prep.model, likelihoods=option_lps
    )

    (trim_completion_choice if legacy else trim_chat_choice)(choice, prep.wish)
    withheld = outcome.abstained and prep.plan.abstain == "replace"
    if withheld:
        (withhold_completion if legacy else withhold_chat)(choice, prep.plan.idk_message)
    choice_cid = choice_id(cid, index)
    public = outcome.public(choice_cid, withheld=withheld)
    choice["calibration"] = public
    return choice_cid, outcome, public


@router.post("/v1/chat/completions", openapi_extra=_CHAT_DOC, summary="Chat completion")
async def chat_completions(
    request: Request, principal: Principal = Depends(authenticate)
) -> Response:
    """OpenAI chat completion, forwarded to the engine, with a `calibration` object added."""
    return await complete(request, principal, legacy=False)


@router.post("/v1/completions", openapi_extra=_COMPLETIONS_DOC, summary="Text completion")
async def completions(request: Request, principal: Principal = Depends(authenticate)) -> Response:
    """Legacy text completion, forwarded to the engine, with a `calibration` object added."""
    return await complete(request, principal, legacy=True)


@router.get("/v1/models", summary="List models")
async def list_models(request: Request, _: Principal = Depends(authenticate)) -> Response:
    """The models clients can use: configured names (a `served_name` mapped back), the global
    upstream's other models, and every configured model (see `service.model_list`)."""
    body = await model_list(request.app.state.upstream, request.app.state.settings)
    return Response(_dumps(body), media_type="application/json")
