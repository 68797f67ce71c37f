"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure the gateway reports goes through `APIError` or one of the handlers installed by
`install_error_handlers`, so clients written for OpenAI/vLLM parse our errors unchanged and no
request ever sees a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "upstream_timeout_error",
}


def error_type_for(status: int) -> str:
    """The OpenAI-style error `type` that goes with an HTTP status."""
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(
    message: str,
    status: int,
    *,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Build the JSON body of an error response."""
    return {
        "error": {
            "message": message,
            "type": type or error_type_for(status),
            "param": param,
            "code": code,
        }
    }


class APIError(Exception):
    """An error to be returned to the client with `status` in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type_for(status)
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.status, type=self.type, param=self.param, code=self.code),
            status_code=self.status,
            headers=self.headers,
        )


def internal_error_response(method: str, path: str) -> JSONResponse:
    """Log the exception being handled; answer 500 in OpenAI's shape (no traceback leaks)."""
    logger.exception("unhandled error on %s %s", method, path)
    return JSONResponse(
        error_body("Internal error in the calibration gateway.", 500), status_code=500
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = first.get("msg", "Invalid value.")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return message, param


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception class a request can raise to an OpenAI-shaped response."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, 422, param=param), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error."
        return JSONResponse(
            error_body(message, exc.status_code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(request.method, request.url.path)


# ------------------------------------------------------------------------ the documented shape


class ErrorDetail(BaseModel):
    """The inside of every error body (OpenAI's shape)."""

    model_config = ConfigDict(extra="forbid")

    message: str
    type: str
    param: str | None
    code: str | int | None  # ours are strings; an upstream's (vLLM) may be its HTTP status


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body of the gateway: `{"error": {"message", "type", "param", "code"}}`."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


def document_errors(app: FastAPI) -> None:
    """Make the OpenAPI spec say what the gateway really answers on errors: `ErrorResponse` for
    any 4xx/5xx (FastAPI's default `HTTPValidationError` 422 is replaced — our handler answers
    422 in OpenAI's shape). Checked by schemathesis in tests/security/test_fuzz_openapi.py."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(error_schema.pop("$defs", {}))
        schemas["ErrorResponse"] = error_schema
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        for operations in spec.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, what in (("4XX", "Client error"), ("5XX", "Gateway or upstream error")):
                    responses[status] = {
                        "description": f"{what}, in OpenAI's error shape.",
                        "content": {"application/json": {"schema": ref}},
                    }
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
