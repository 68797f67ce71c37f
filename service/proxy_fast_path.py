"""ASGI fast path for the two hot routes: ``POST /v1/chat/completions`` and ``/v1/completions``.

Why: profiled after the upstream-client change (docs/performance.md), FastAPI's exception
middleware, routing, request/response wrapping and dependency resolution were ~25 % of the
gateway's CPU per proxied request — more than calibration and our request handling together.
This middleware answers those two routes by calling exactly what their FastAPI endpoints call
(`authenticate`, then `proxy.complete`) and hands every other request (and every other method on
those paths) to FastAPI. The FastAPI routes stay registered: they document the API in OpenAPI
and remain the code path if this middleware is not installed.

Errors keep their contract: an `APIError` becomes its OpenAI-shaped response, anything else is
logged and answered 500 in the same shape (what `install_error_handlers` does for FastAPI).
It sits inside `BodyLimitMiddleware`, so the body cap applies unchanged.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import authenticate
from service.errors import APIError, internal_error_response
from service.routes.proxy import complete

__all__ = ["ProxyFastPath"]

#: path → legacy (text completions) flag
_HOT_PATHS = {"/v1/chat/completions": False, "/v1/completions": True}


class ProxyFastPath:
    """Serve the proxy routes directly; pass everything else to the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        legacy = _HOT_PATHS.get(scope["path"])
        if legacy is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            principal = await authenticate(request)
            response: Response = await complete(request, principal, legacy)
        except APIError as error:
            response = error.response()
        except ClientDisconnect:
            return  # nobody to answer
        except Exception:
            response = internal_error_response("POST", scope["path"])
        await response(scope, receive, send)
