"""The pooled HTTP client that talks to the upstream engine (vLLM's OpenAI server).

One `UpstreamHTTP` client (service/upstream_http.py) per process, opened in the app's lifespan
and shared by every request (no per-request client, no per-request TCP/TLS setup). Transport
failures become `APIError`s with the status a client should see:

- connection refused / reset before a response, or a malformed response → 502
- the upstream took longer than the configured timeout → 504
- the upstream answered 4xx/5xx → the same status, with the upstream's own error body
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from service.errors import APIError, error_type_for
from service.settings import Settings
from service.upstream_http import UpstreamHTTP, UpstreamResponse, UpstreamTransportError

__all__ = [
    "Upstream",
    "UpstreamReply",
    "UpstreamResponse",
    "UpstreamTransportError",
    "error_kind",
    "upstream_error_from",
]


@dataclass(slots=True)
class UpstreamReply:
    """A complete (non-streamed) 2xx upstream answer, parsed once."""

    status: int
    body: Any


class Upstream:
    """Thin async façade over the pooled client; every method maps transport errors."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.upstream
        self.client = UpstreamHTTP(
            max_connections=settings.upstream_max_connections,
            timeout=settings.upstream_timeout_s,
            connect_timeout=settings.upstream_connect_timeout_s,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def url(self, base: str | None, path: str) -> str:
        return f"{(base or self.base_url).rstrip('/')}/{path.lstrip('/')}"

    async def post_json(self, base: str | None, path: str, content: bytes) -> UpstreamReply:
        """POST an already-serialized JSON body; return the parsed 2xx JSON body."""
        return await self._complete("POST", self.url(base, path), content, None)

    async def get_json(
        self, base: str | None, path: str, *, timeout: float | None = None
    ) -> UpstreamReply:
        return await self._complete("GET", self.url(base, path), b"", timeout)

    async def _complete(
        self, method: str, url: str, content: bytes, timeout: float | None
    ) -> UpstreamReply:
        try:
            response = await self.client.request(method, url, body=content, timeout=timeout)
            raw = await response.read()
        except UpstreamTransportError as exc:
            raise upstream_error_from(exc) from None
        return _parse_reply(response.status, raw)

    async def open_stream(self, base: str | None, path: str, content: bytes) -> UpstreamResponse:
        """Start a streamed POST; return the open 2xx response (caller must `aclose()` it)."""
        try:
            response = await self.client.request(
                "POST", self.url(base, path), body=content, accept=b"text/event-stream"
            )
        except UpstreamTransportError as exc:
            raise upstream_error_from(exc) from None
        if response.status >= 400 or not response.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            try:
                raw = await response.read()
            except UpstreamTransportError as exc:
                raise upstream_error_from(exc) from None
            if response.status >= 400:
                raise _status_error(response.status, raw)
            raise APIError(
                502,
                "The upstream engine answered a stream request without an event stream.",
                code="upstream_bad_body",
            )
        return response


_KIND_BY_CODE = {
    "upstream_timeout": "timeout",
    "upstream_unreachable": "connect",
    "upstream_connection_error": "invalid_response",
    "upstream_bad_body": "invalid_response",
    "upstream_stream_dropped": "stream_dropped",
}


def error_kind(error: APIError) -> str | None:
    """The `calib_upstream_errors_total{kind}` label of an upstream failure (None: not one).

    An upstream 4xx is the caller's fault passed on, not an upstream failure.
    """
    if error.code == "upstream_error":
        return "status" if error.status >= 500 else None
    return _KIND_BY_CODE.get(error.code or "")


def upstream_error_from(exc: UpstreamTransportError) -> APIError:
    """Translate a transport failure into the error the client should see."""
    if exc.kind == "timeout":
        return APIError(504, "The upstream engine did not answer in time.", code="upstream_timeout")
    if exc.kind == "connect":
        return APIError(
            502, "Could not connect to the upstream engine.", code="upstream_unreachable"
        )
    return APIError(
        502, f"The upstream engine connection failed: {exc}.", code="upstream_connection_error"
    )


def _parse_reply(status: int, raw: bytes) -> UpstreamReply:
    if status >= 400:
        raise _status_error(status, raw)
    try:
        body = json.loads(raw)
    except ValueError:
        raise APIError(
            502, "The upstream engine returned a body that is not JSON.", code="upstream_bad_body"
        ) from None
    return UpstreamReply(status, body)


def _status_error(status: int, raw: bytes) -> APIError:
    """The upstream's own error, passed on with its status.

    vLLM answers OpenAI's `{"error": {...}}`, which the client gets as sent (the engine's `type`
    and `code` included; a field it lacks is added as null); its older flat
    `{"object": "error", "message", ...}`, FastAPI's `{"detail": ...}` or plain text become
    OpenAI's shape with the upstream's message.
    """
    message = None
    param = None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    verbatim = None
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if isinstance(inner.get("message"), str):
            message = inner["message"]
            if inner is not body:  # OpenAI's shape: as sent, any missing field added
                error = {"message": message, "type": error_type_for(status), "param": None}
                error["code"] = None
                error.update(inner)
                verbatim = {**body, "error": error}
        elif isinstance(body.get("detail"), str):  # plain FastAPI/Starlette errors
            message = body["detail"]
        if isinstance(inner.get("param"), str):
            param = inner["param"]
    if message is None:
        text = raw.decode("utf-8", "replace").strip()
        message = text[:500] or f"The upstream engine answered HTTP {status}."
    return UpstreamStatusError(status, message, param=param, body=verbatim)


class UpstreamStatusError(APIError):
    """An upstream 4xx/5xx. `code` stays `upstream_error` inside the gateway (metrics tell the
    caller's faults from upstream failures by it); the client gets the upstream's own body."""

    def __init__(
        self, status: int, message: str, *, param: str | None, body: dict[str, Any] | None
    ) -> None:
        super().__init__(status, message, param=param, code="upstream_error")
        self.upstream_body = body

    def response(self) -> JSONResponse:
        if self.upstream_body is None:
            return super().response()
        return JSONResponse(self.upstream_body, status_code=self.status, headers=self.headers)
