"""The pooled HTTP client that talks to the upstream engine (vLLM's OpenAI server).

One `httpx.AsyncClient` per process, opened in the app's lifespan and shared by every request
(no per-request client, no per-request TLS/TCP setup). Transport failures become `APIError`s
with the status a client should see:

- connection refused / reset before a response, or a malformed response → 502
- the upstream took longer than the configured timeout → 504
- the upstream answered 4xx/5xx → the same status, with the upstream's own message
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import httpx

from service.errors import APIError
from service.settings import Settings

__all__ = ["Upstream", "UpstreamReply", "error_kind", "upstream_error_from"]

_JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}
_SSE_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}

#: Connections per pool shard (see `_ShardedTransport`).
SHARD_CONNECTIONS = 16


class _ShardedTransport(httpx.AsyncBaseTransport):
    """Several small httpcore connection pools used in turn, instead of one big one.

    httpcore's pool walks all its connections twice per request (polling each idle socket, and
    for each idle connection building a list of all of them: O(n²) in the pool's size). With one
    pool of hundreds of keep-alive connections that walk cost the gateway ~4 ms of CPU per
    request at concurrency 256 (docs/performance.md). Pools of at most `SHARD_CONNECTIONS`,
    picked round-robin, keep it flat; the total connection bound stays `max_connections`.
    """

    def __init__(self, max_connections: int, keepalive_expiry: float) -> None:
        count = max(1, math.ceil(max_connections / SHARD_CONNECTIONS))
        per_shard = math.ceil(max_connections / count)
        limits = httpx.Limits(
            max_connections=per_shard,
            max_keepalive_connections=per_shard,
            keepalive_expiry=keepalive_expiry,
        )
        self.shards = [
            httpx.AsyncHTTPTransport(limits=limits, trust_env=False) for _ in range(count)
        ]
        self._turn = itertools.cycle(self.shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._turn).handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


@dataclass(slots=True)
class UpstreamReply:
    """A complete (non-streamed) 2xx upstream answer, parsed once."""

    status: int
    body: Any


class Upstream:
    """Thin async façade over the pooled client; every method maps transport errors."""

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = settings.upstream
        if transport is None:
            transport = _ShardedTransport(settings.upstream_max_connections, keepalive_expiry=30.0)
        timeout = httpx.Timeout(
            settings.upstream_timeout_s,
            connect=settings.upstream_connect_timeout_s,
            pool=settings.upstream_timeout_s,
        )
        self.client = httpx.AsyncClient(timeout=timeout, transport=transport, trust_env=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    def url(self, base: str | None, path: str) -> str:
        return f"{(base or self.base_url).rstrip('/')}/{path.lstrip('/')}"

    async def post_json(self, base: str | None, path: str, content: bytes) -> UpstreamReply:
        """POST an already-serialized JSON body; return the parsed 2xx JSON body."""
        try:
            response = await self.client.post(
                self.url(base, path), content=content, headers=_JSON_HEADERS
            )
        except httpx.HTTPError as exc:
            raise upstream_error_from(exc) from None
        return _parse_reply(response)

    async def get_json(self, base: str | None, path: str, *, timeout: float | None = None):
        try:
            kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
            response = await self.client.get(self.url(base, path), **kwargs)
        except httpx.HTTPError as exc:
            raise upstream_error_from(exc) from None
        return _parse_reply(response)

    async def open_stream(self, base: str | None, path: str, content: bytes) -> httpx.Response:
        """Start a streamed POST; return the open 2xx response (caller must `aclose()` it)."""
        request = self.client.build_request(
            "POST", self.url(base, path), content=content, headers=_SSE_HEADERS
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise upstream_error_from(exc) from None
        if response.status_code >= 400 or not response.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            try:
                raw = await response.aread()
            except httpx.HTTPError as exc:
                raise upstream_error_from(exc) from None
            finally:
                await response.aclose()
            if response.status_code >= 400:
                raise _status_error(response.status_code, raw)
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


def upstream_error_from(exc: httpx.HTTPError) -> APIError:
    """Translate an httpx transport error into the error the client should see."""
    if isinstance(exc, httpx.TimeoutException):
        return APIError(504, "The upstream engine did not answer in time.", code="upstream_timeout")
    if isinstance(exc, httpx.ConnectError):
        return APIError(
            502, "Could not connect to the upstream engine.", code="upstream_unreachable"
        )
    return APIError(
        502,
        f"The upstream engine connection failed: {type(exc).__name__}.",
        code="upstream_connection_error",
    )


def _parse_reply(response: httpx.Response) -> UpstreamReply:
    raw = response.content
    if response.status_code >= 400:
        raise _status_error(response.status_code, raw)
    try:
        body = json.loads(raw)
    except ValueError:
        raise APIError(
            502, "The upstream engine returned a body that is not JSON.", code="upstream_bad_body"
        ) from None
    return UpstreamReply(response.status_code, body)


def _status_error(status: int, raw: bytes) -> APIError:
    """The upstream's own error, re-raised with its status and message in OpenAI's shape.

    vLLM answers either OpenAI's `{"error": {...}}` or its older flat
    `{"object": "error", "message", "type", "param", "code"}`; both are understood.
    """
    message = None
    param = None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if isinstance(inner.get("message"), str):
            message = inner["message"]
        elif isinstance(body.get("detail"), str):  # plain FastAPI/Starlette errors
            message = body["detail"]
        if isinstance(inner.get("param"), str):
            param = inner["param"]
    if message is None:
        text = raw.decode("utf-8", "replace").strip()
        message = text[:500] or f"The upstream engine answered HTTP {status}."
    return APIError(status, message, param=param, code="upstream_error")
