"""The lean upstream client (service/proxy/_upstream_http.py) against real loopback TCP servers.

Each server here is a few lines of asyncio that answers with exact bytes, so a test controls
what the wire carries: keep-alive or not, chunked or close-delimited bodies, stale connections,
stalls, garbage. The gateway-level behaviour (status codes, error shapes) is pinned in
tests/api/test_upstream_errors.py and tests/reliability/test_upstream_recovery.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from service.proxy import UpstreamHTTP, UpstreamTransportError
from tests.wire_upstream import WireUpstream


class Wire:
    """A loopback server that counts connections and requests and runs one handler per request."""

    def __init__(self, answer: Callable[[int, bytes], Awaitable[bytes | None]]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.handlers: list[asyncio.Task] = []
        self.ended = 0  # connections closed (by either side)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        self.handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                reply = await self.answer(len(self.requests), body)
                if reply is None:  # the handler wants the connection cut
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.ended += 1
            writer.close()


@asynccontextmanager
async def wire(answer: Callable[[int, bytes], Awaitable[bytes | None]]) -> AsyncIterator[tuple]:
    server_state = Wire(answer)
    server = await asyncio.start_server(server_state.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield server_state, f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        for writer in server_state.writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*server_state.handlers), 5)


async def _eventually(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll `condition` (bounded): timing-independent waits for what another task does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def ok(body: bytes, *, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


def client(**kwargs: float) -> UpstreamHTTP:
    options = {"max_connections": 4, "timeout": 2.0, "connect_timeout": 2.0} | kwargs
    return UpstreamHTTP(**options)  # type: ignore[arg-type]


async def test_keep_alive_reuses_one_connection_and_sends_the_body() -> None:
    async def echo(n: int, body: bytes) -> bytes:
        return ok(b'{"n": %d, "got": %s}' % (n, body))

    async with wire(echo) as (state, base):
        http = client()
        for n in range(1, 4):
            response = await http.request("POST", f"{base}/chat/completions", body=b'"x"')
            assert response.status == 200
            assert await response.read() == b'{"n": %d, "got": "x"}' % n
        await http.aclose()
    assert state.connections == 1
    first = state.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first and first.endswith(b'\r\n\r\n"x"')


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def close_after(n: int, body: bytes) -> bytes:
        return ok(b"{}", extra=b"Connection: close\r\n")

    async with wire(close_after) as (state, base):
        http = client()
        for _ in range(3):
            response = await http.request("GET", f"{base}/models")
            assert await response.read() == b"{}"
        await http.aclose()
    assert state.connections == 3


async def test_a_get_on_a_reused_connection_closed_unanswered_is_sent_again_once() -> None:
    """The server drops the connection without answering the second request (as a server whose
    keep-alive timer fired just then does). A GET is idempotent: it is re-sent on a new one."""

    async def drop_second(n: int, body: bytes) -> bytes | None:
        return None if n == 2 else ok(b'{"n": %d}' % n)

    async with wire(drop_second) as (state, base):
        http = client()
        assert await (await http.request("GET", f"{base}/models")).read() == b'{"n": 1}'
        assert await (await http.request("GET", f"{base}/models")).read() == b'{"n": 3}'
        await http.aclose()
    assert state.connections == 2


async def test_a_post_the_server_read_is_never_sent_twice() -> None:
    """A reused connection: the server reads the second POST in full, then closes without a
    byte of answer (a crash mid-generation). Re-sending would run the generation twice, so the
    caller gets the error, and the server saw that request exactly once."""

    async def drop_second(n: int, body: bytes) -> bytes | None:
        return None if n == 2 else ok(b'{"n": %d}' % n)

    async with wire(drop_second) as (state, base):
        http = client()
        first = await http.request("POST", f"{base}/completions", body=b'{"p": 1}')
        assert await first.read() == b'{"n": 1}'
        with pytest.raises(UpstreamTransportError) as caught:
            await http.request("POST", f"{base}/completions", body=b'{"p": 2}')
        assert caught.value.kind == "protocol"
        # The next request works on a new connection.
        third = await http.request("POST", f"{base}/completions", body=b'{"p": 3}')
        assert await third.read() == b'{"n": 3}'
        await http.aclose()
    bodies = [r.rsplit(b"\r\n\r\n", 1)[1] for r in state.requests]
    assert bodies == [b'{"p": 1}', b'{"p": 2}', b'{"p": 3}']  # the second exactly once
    assert state.connections == 2


@pytest.mark.parametrize("loop_busy", [False, True], ids=["loop-saw-eof", "eof-not-dispatched"])
async def test_a_connection_the_server_closed_while_idle_is_never_written_to(
    loop_busy: bool,
) -> None:
    """The server closes keep-alive connections idle for 0.1 s (its keep-alive timer; ours is
    longer). The next POST must go out on a new connection, once. With `loop_busy` the event
    loop is blocked while the server closes, so the EOF sits in the kernel undispatched when the
    request is sent: only the pre-send socket poll can tell the connection is dead."""

    def answer(n: int, head: bytes, body: bytes) -> bytes:
        return ok(b'{"n": %d}' % n)

    with WireUpstream(answer, idle_close_s=0.1) as server:
        http = client(keepalive_expiry=30.0)
        base = server.base_url
        first = await http.request("POST", f"{base}/completions", body=b"{}")
        assert await first.read() == b'{"n": 1}'
        if loop_busy:
            # Blocks the loop (no await): the server's FIN arrives but is not dispatched.
            server.wait_closed(1)
        else:
            assert await _eventually(lambda: server.closed == 1)
            assert await _eventually(lambda: all(c.closed for q in http._idle.values() for c in q))
        second = await http.request("POST", f"{base}/completions", body=b"{}")
        assert await second.read() == b'{"n": 2}'
        await http.aclose()
        assert server.paths() == ["POST /v1/completions"] * 2  # each request exactly once
        assert server.connections == 2


async def test_a_fresh_connection_dropped_before_answering_is_a_protocol_error() -> None:
    async def drop(n: int, body: bytes) -> None:
        return None

    async with wire(drop) as (_, base):
        http = client()
        with pytest.raises(UpstreamTransportError) as caught:
            await http.request("GET", f"{base}/models")
        assert caught.value.kind == "protocol"
        await http.aclose()


async def test_chunked_streams_split_into_lines_across_chunk_boundaries() -> None:
    events = b'data: {"a": 1}\r\n\r\ndata: {"b": "\xc3\xa9"}\n\ndata: [DONE]\n\n'
    chunks = [events[:7], events[7:23], events[23:]]
    wire_body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    async def stream(n: int, body: bytes) -> bytes:
        return head + wire_body

    async with wire(stream) as (state, base):
        http = client()
        for _ in range(2):
            response = await http.request("POST", f"{base}/chat/completions", body=b"{}")
            assert response.headers["content-type"] == "text/event-stream"
            lines = [line async for line in response.aiter_lines()]
            await response.aclose()
            assert lines == ['data: {"a": 1}', "", 'data: {"b": "é"}', "", "data: [DONE]", ""]
        await http.aclose()
    assert state.connections == 1  # a stream read to its end leaves the connection reusable


@asynccontextmanager
async def answer_then_close(reply: bytes) -> AsyncIterator[str]:
    """A server that answers each request's head with `reply`, then closes the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


async def test_a_close_delimited_body_ends_at_eof() -> None:
    reply = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"old": true}'
    async with answer_then_close(reply) as base:
        http = client()
        response = await http.request("GET", f"{base}/models")
        assert await response.read() == b'{"old": true}'
        await http.aclose()


async def test_a_body_cut_short_raises_instead_of_returning_half() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n" + b"{" * 100
    async with answer_then_close(reply) as base:
        http = client()
        response = await http.request("GET", f"{base}/models")
        with pytest.raises(UpstreamTransportError) as caught:
            await response.read()
        assert caught.value.kind == "protocol"
        await http.aclose()


async def test_no_answer_within_the_timeout_is_a_timeout_and_frees_the_slot() -> None:
    release = asyncio.Event()

    async def stall(n: int, body: bytes) -> bytes:
        if n == 1:
            await release.wait()
        return ok(b"{}")

    async with wire(stall) as (_, base):
        http = client(max_connections=1, timeout=0.3)
        with pytest.raises(UpstreamTransportError) as caught:
            await http.request("GET", f"{base}/models")
        assert caught.value.kind == "timeout"
        release.set()
        # The single slot was given back: the next request gets a connection and an answer.
        assert await (await http.request("GET", f"{base}/models")).read() == b"{}"
        await http.aclose()


async def test_in_flight_requests_are_bounded_and_waiting_too_long_is_a_timeout() -> None:
    gate = asyncio.Event()
    in_flight = 0
    most = 0

    async def slow(n: int, body: bytes) -> bytes:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await gate.wait()
        in_flight -= 1
        return ok(b"{}")

    async with wire(slow) as (_, base):
        http = client(max_connections=2, timeout=5.0)

        async def one() -> bytes:
            return await (await http.request("GET", f"{base}/models")).read()

        tasks = [asyncio.create_task(one()) for _ in range(5)]
        assert await _eventually(lambda: most == 2)
        await asyncio.sleep(0.1)  # give a third request the chance to slip through (it must not)
        assert most == 2
        gate.set()
        assert await asyncio.gather(*tasks) == [b"{}"] * 5
        assert most == 2

        gate.clear()
        waiting = UpstreamHTTP(max_connections=1, timeout=0.3, connect_timeout=1.0)
        first = asyncio.create_task(waiting.request("GET", f"{base}/models"))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTransportError) as caught:
            await waiting.request("GET", f"{base}/models")
        assert caught.value.kind == "timeout"
        with pytest.raises(UpstreamTransportError):
            await first  # its own headers never came either
        gate.set()
        await http.aclose()
        await waiting.aclose()


async def test_refused_is_a_connect_error_and_garbage_is_a_protocol_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    http = client()
    with pytest.raises(UpstreamTransportError) as caught:
        await http.request("GET", f"http://127.0.0.1:{port}/v1/models")
    assert caught.value.kind == "connect"

    async def garbage(n: int, body: bytes) -> bytes:
        return b"this is not HTTP at all\r\n\r\n"

    async with wire(garbage) as (_, base):
        with pytest.raises(UpstreamTransportError) as caught:
            await http.request("GET", f"{base}/models")
        assert caught.value.kind == "protocol"
    await http.aclose()


async def test_a_large_stream_is_read_whole_with_flow_control() -> None:
    line = b"data: " + b"x" * 1000 + b"\n\n"
    body = line * 500  # ~0.5 MB, far above the client's read-ahead bound

    async def big(n: int, _: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
            % (
                len(body),
                body,
            )
        )

    async with wire(big) as (_, base):
        http = client()
        response = await http.request("POST", f"{base}/chat/completions", body=b"{}")
        count = 0
        async for text in response.aiter_lines():
            if text:
                count += 1
                await asyncio.sleep(0) if count % 50 else await asyncio.sleep(0.01)
        await response.aclose()
        assert count == 500
        await http.aclose()


async def test_closing_a_stream_early_closes_its_connection() -> None:
    async def endless(n: int, body: bytes) -> bytes:
        if n > 1:
            return ok(b"{}")
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n"
        )

    async with wire(endless) as (state, base):
        http = client(max_connections=1)
        response = await http.request("POST", f"{base}/chat/completions", body=b"{}")
        lines = response.aiter_lines()
        assert await anext(lines) == "data: 1"
        await response.aclose()
        # The half-read connection is not reused; the freed slot serves the next request.
        assert await (await http.request("GET", f"{base}/models")).read() == b"{}"
        await http.aclose()
    assert state.connections == 2


async def test_connections_a_burst_left_idle_are_closed_once_expired() -> None:
    gate = asyncio.Event()

    async def held(n: int, body: bytes) -> bytes:
        await gate.wait()
        return ok(b"{}")

    async with wire(held) as (state, base):
        http = client(keepalive_expiry=0.5)

        async def one() -> bytes:
            return await (await http.request("GET", f"{base}/models")).read()

        burst = [asyncio.create_task(one()) for _ in range(3)]
        assert await _eventually(lambda: len(state.requests) == 3)
        gate.set()
        await asyncio.gather(*burst)
        assert state.connections == 3 and state.ended == 0  # all three kept alive
        # Steady light traffic reuses the most recent connection; the two others expire and
        # are closed on a later release, not left open until traffic peaks again.
        for _ in range(25):
            assert await one() == b"{}"
            await asyncio.sleep(0.05)
        assert await _eventually(lambda: state.ended == 2)
        assert state.connections == 3
        await http.aclose()


async def test_idle_connections_are_closed_after_expiry_without_further_traffic() -> None:
    async def answer(n: int, body: bytes) -> bytes:
        return ok(b"{}")

    async with wire(answer) as (state, base):
        http = client(keepalive_expiry=0.2)
        assert await (await http.request("GET", f"{base}/models")).read() == b"{}"
        assert state.ended == 0
        # Closed by the client's reaper; this server would keep it open forever.
        assert await _eventually(lambda: state.ended == 1)
        await http.aclose()


async def test_line_batches_hold_what_arrived_together_and_never_wait_for_more() -> None:
    """Events written in one go come as one batch (the relay writes them with one send); the
    next batch is not awaited before the first is handed over (the server sends the rest only
    once the client has the first batch: waiting for more would hang this test)."""
    first_seen = asyncio.Event()

    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + chunk(b"data: 1\n\n")
            + chunk(b"data: 2\r\n\r\n")
            + chunk(b"data: 3\n\ndata: pa")
        )
        await writer.drain()
        await first_seen.wait()
        writer.write(chunk(b"rt\n\n") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = client()
    try:
        response = await http.request(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", body=b"{}"
        )
        batches = []
        async for batch in response.aiter_line_batches():
            batches.append(batch)
            first_seen.set()
        await response.aclose()
    finally:
        await http.aclose()
        server.close()
    assert batches[0] == ["data: 1", "", "data: 2", "", "data: 3", ""]
    assert [line for batch in batches[1:] for line in batch] == [
        "data: part",
        "",
        "data: [DONE]",
        "",
    ]
