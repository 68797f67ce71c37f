"""The pooled HTTP client that talks to the upstream engine (vLLM's OpenAI server).

One `UpstreamHTTP` client (`_upstream_http.py`) per process, opened in the app's lifespan
and shared by every request (no per-request client, no per-request TCP/TLS setup). Transport
failures become `APIError`s with the status a client should see:

- connection refused / reset before a response, or a malformed response → 502
- the upstream took longer than the configured timeout → 504
- the upstream answered 4xx/5xx → the same status, with the upstream's own error body

Every call names its `UpstreamTarget`: the base URL and the `Authorization` value for it
(`Settings.upstream_key_for`). The client's own headers are never forwarded, its gateway API key
included: the upstream sees only the key the gateway is configured with (docs/security.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

from service.errors import APIError, error_type_for
from service.proxy._body import loads
from service.proxy._upstream_http import UpstreamHTTP, UpstreamResponse, UpstreamTransportError
from service.settings import ModelConfig, Settings

__all__ = [
    "Upstream",
    "UpstreamReply",
    "UpstreamResponse",
    "UpstreamTarget",
    "UpstreamTransportError",
    "error_kind",
    "upstream_error_from",
]


@dataclass(slots=True)
class UpstreamReply:
    """A complete (non-streamed) 2xx upstream answer, parsed once."""

    status: int
    body: Any


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where one model's requests go: base URL, and the `Authorization` header value if any."""

    base: str
    authorization: bytes | None = field(default=None, repr=False)

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"


class Upstream:
    """Thin async façade over the pooled client; every method maps transport errors."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.upstream
        self.default = self._resolve(ModelConfig())
        self._targets: dict[int, tuple[ModelConfig, UpstreamTarget]] = {}
        self.client = UpstreamHTTP(
            max_connections=settings.upstream_max_connections,
            timeout=settings.upstream_timeout_s,
            connect_timeout=settings.upstream_connect_timeout_s,
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    def target(self, config: ModelConfig | None = None) -> UpstreamTarget:
        """The target of a model's configuration (None: the global upstream and key)."""
        if config is None:
            return self.default
        hit = self._targets.get(id(config))
        if hit is not None and hit[0] is config:
            return hit[1]
        resolved = self._resolve(config)
        self._targets[id(config)] = (config, resolved)
        return resolved

    def _resolve(self, config: ModelConfig) -> UpstreamTarget:
        key = self.settings.upstream_key_for(config)
        header = f"Bearer {key}".encode("ascii") if key else None
        return UpstreamTarget(self.settings.upstream_base_for(config), header)

    async def post_json(
        self, target: UpstreamTarget | None, path: str, content: bytes
    ) -> UpstreamReply:
        """POST an already-serialized JSON body; return the parsed 2xx JSON body.

        `target` None: the global upstream with the global key (as for every method here)."""
        return await self._complete("POST", target or self.default, path, content, None)

    async def get_json(
        self, target: UpstreamTarget | None, path: str, *, timeout: float | None = None
    ) -> UpstreamReply:
        return await self._complete("GET", target or self.default, path, b"", timeout)

    async def _complete(
        self,
        method: str,
        target: UpstreamTarget,
        path: str,
        content: bytes,
        timeout: float | None,
    ) -> UpstreamReply:
        try:
            response = await self.client.request(
                method,
                target.url(path),
                body=content,
                timeout=timeout,
                authorization=target.authorization,
            )
            raw = await response.read()
        except UpstreamTransportError as exc:
            raise upstream_error_from(exc) from None
        return _parse_reply(response.status, _scrub(raw, target))

    async def open_stream(
        self, target: UpstreamTarget | None, path: str, content: bytes
    ) -> UpstreamResponse:
        """Start a streamed POST; return the open 2xx response (caller must `aclose()` it)."""
        target = target or self.default
        try:
            response = await self.client.request(
                "POST",
                target.url(path),
                body=content,
                accept=b"text/event-stream",
                authorization=target.authorization,
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
                raise _status_error(response.status, _scrub(raw, target))
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


def _scrub(raw: bytes, target: UpstreamTarget) -> bytes:
    """An upstream body with our key blanked: an error page that echoes the request's headers
    must not hand the key to the client."""
    header = target.authorization
    if header is None or len(raw) < 8:
        return raw
    key = header[7:]  # after b"Bearer "
    return raw.replace(key, b"***") if key in raw else raw


def _parse_reply(status: int, raw: bytes) -> UpstreamReply:
    if status >= 400:
        raise _status_error(status, raw)
    try:
        body = loads(raw)
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
        nested = body.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else body
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
    if status in (401, 403):
        # The gateway's credentials were refused, not the client's: a 401 would tell an OpenAI
        # SDK user that *their* key is wrong. 502 names the real culprit.
        return APIError(
            502,
            f"The upstream engine refused the gateway's credentials (HTTP {status}: {message}). "
            "Check the gateway's upstream_api_key (docs/configuration.md).",
            code="upstream_error",
        )
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
