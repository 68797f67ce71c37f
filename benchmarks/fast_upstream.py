"""A minimal, fast stand-in for the vLLM OpenAI server, for the overhead benchmark.

Raw asyncio (uvloop when installed) on HTTP/1.1 keep-alive, no framework: every answer is a
pre-encoded vLLM-shaped body (chat completion with `tokens` generated tokens x `top`
top-logprobs, the first one an option letter), only the response `id` changes per request (the
gateway keys predictions by it). `"stream":true` in the body gets the same answer as server-sent
events (chunked transfer encoding). `GET /v1/models` lists `test-model`.

Its own cost per request is a few tens of microseconds, so in the benchmark "direct" measures the
load generator and the loopback, and the difference "through the gateway" is the gateway.

    python -m benchmarks.fast_upstream --port 8099 [--tokens 8] [--top 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

from tests.upstream_double import _bench_reply

__all__ = ["build_bodies", "serve"]

_ID = "chatcmpl-@@ID@@"


def build_bodies(tokens: int = 8, top: int = 20) -> tuple[bytes, list[bytes]]:
    """(JSON body, SSE events) with `@@ID@@` where the per-response id goes."""
    reply = _bench_reply(tokens, top)
    body = reply("/v1/chat/completions", {"model": "test-model"}).body
    body["id"] = _ID
    events = reply("/v1/chat/completions", {"model": "test-model", "stream": True}).events
    sse = []
    for event in events:
        event["id"] = _ID
        sse.append(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
    sse.append(b"data: [DONE]\n\n")
    return json.dumps(body, separators=(",", ":")).encode(), sse


_MODELS = json.dumps(
    {"object": "list", "data": [{"id": "test-model", "object": "model", "owned_by": "bench"}]}
).encode()


class _Handler(asyncio.Protocol):
    def __init__(self, body: bytes, sse: list[bytes], ids: itertools.count) -> None:
        self.body, self.sse, self.ids = body, sse, ids
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                eol = head.find(b"\r\n", at)
                length = int(head[at + 15 : eol if eol >= 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            payload = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._answer(head, payload)

    def _answer(self, head: bytes, payload: bytes) -> None:
        assert self.transport is not None
        if head.startswith(b"get"):
            self._send(b"application/json", _MODELS)
            return
        rid = str(next(self.ids)).encode()
        if b'"stream":true' not in payload:
            self._send(b"application/json", self.body.replace(b"@@ID@@", rid))
            return
        parts = [
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        ]
        for event in self.sse:
            chunk = event.replace(b"@@ID@@", rid)
            parts.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        parts.append(b"0\r\n\r\n")
        self.transport.write(b"".join(parts))

    def _send(self, content_type: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (content_type, len(body), body)
        )


async def serve(port: int, tokens: int = 8, top: int = 20) -> None:
    body, sse = build_bodies(tokens, top)
    ids = itertools.count(1)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Handler(body, sse, ids), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fixed vLLM-shaped answer, fast.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(args.port, args.tokens, args.top))


def loop_factory():
    """uvloop's event loop when installed (as `calib serve` uses), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
