"""ASGI middleware that caps request bodies at `settings.max_body_bytes` (413).

It works at the ASGI layer, while the body is read: a declared `Content-Length` above the limit
is refused before a byte is read, and a chunked (or lying) body is cut off as soon as the bytes
received pass the limit — a client cannot make the gateway buffer more than the limit.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import APIError

__all__ = ["BodyLimitMiddleware"]


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        code="request_too_large",
    )


class BodyLimitMiddleware:
    """Refuse request bodies larger than `max_bytes` with an OpenAI-shaped 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    await _send_error(send, _too_large(limit))
                    return
                break

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's `await request.body()`; the APIError handler
                    # turns it into the 413 (or the fallback below does, if nothing else can).
                    raise _too_large(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except APIError as exc:
            if started or exc.status != 413:
                raise
            await _send_error(send, exc)


async def _send_error(send: Send, error: APIError) -> None:
    response = error.response()
    response.headers["connection"] = "close"
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})
