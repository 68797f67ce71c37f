"""A lean pooled HTTP/1.1 client for the upstream engine: asyncio protocol + httptools parser.

Why not httpx: the gateway's own work per request is ~0.3 ms, but an httpx round trip cost ~0.8 ms
of CPU on top (request/response models, header normalisation, anyio, httpcore's pool walks), which
alone broke the issue's 1 ms added-latency target (docs/performance.md). This client does only
what talking to one known OpenAI-style server needs: keep-alive connections in a LIFO pool, one
`write()` per request, a C parser (httptools, the one uvicorn uses) for responses, per-wait
timeouts, and flow control for streams.

Semantics the gateway relies on:

- at most `max_connections` requests in flight; waiting longer than `timeout` for a slot is a
  timeout;
- `timeout` bounds each wait for the upstream (response headers, and each next piece of a body);
  `connect_timeout` bounds opening a connection;
- a request is never sent twice when the server may have read it (a generation must not run
  twice). Before a reused keep-alive connection carries a request it is checked: closed by the
  server (the event loop saw EOF/reset), or anything waiting to be read on the socket (a
  zero-timeout `poll`: an EOF, a reset or stray bytes the loop has not dispatched yet) → it is
  closed and another (or a new) connection is used. Once a byte of the request was written, a
  failure is the caller's error (502), with one exception: an idempotent `GET` (model list,
  readiness probe) is re-sent once on a new connection if a reused one closed before any byte
  of the answer. The remaining window — the server closes the connection between that check
  and the write — is microseconds wide, and rare because idle connections expire first:
- idle connections expire after `keepalive_expiry` seconds (below uvicorn's 5 s default, so we
  drop them before the server does);
- `authorization` (e.g. ``b"Bearer sk-…"``) is sent as the `Authorization` header; it appears
  in no error message.

Failures raise `UpstreamTransportError` with `kind` one of ``connect``, ``timeout``, ``protocol``.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
import time
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

import httptools

__all__ = ["UpstreamHTTP", "UpstreamResponse", "UpstreamTransportError"]

TransportErrorKind = Literal["connect", "timeout", "protocol"]

#: Pause reading a streamed body once this much is buffered and unread (bytes).
_HIGH_WATER = 64 * 1024
_USER_AGENT = b"mllm-calib"


class UpstreamTransportError(Exception):
    """The upstream could not be reached, did not answer in time, or broke the protocol."""

    def __init__(self, kind: TransportErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@lru_cache(maxsize=256)
def _target(url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
    """(pool key, request target, Host header value) of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamTransportError("connect", f"unsupported upstream URL {url!r}")
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname
    default_port = port == (443 if scheme == "https" else 80)
    host_header = host if ":" not in host else f"[{host}]"
    if not default_port:
        host_header = f"{host_header}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return (scheme, host, port), path.encode("ascii"), host_header.encode("ascii")


class _Connection(asyncio.Protocol):
    """One keep-alive TCP connection; parses the response to the request currently on it."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.response: UpstreamResponse | None = None
        self._poll: select.poll | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd >= 0:
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN | select.POLLPRI)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes while idle: the connection is out of step; drop it
            self.close()
            return
        response.got_bytes = True
        try:
            response.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            response.fail("protocol", "the upstream switched protocols")
            self.close()
        except httptools.HttpParserError as exc:
            response.fail("protocol", f"malformed HTTP response ({exc})")
            self.close()

    def eof_received(self) -> bool:
        self.closed = True
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._poll = None
        if self.response is not None:
            self.response.on_connection_lost()

    # -- helpers --------------------------------------------------------------------------------
    def stale(self, oldest_ok: float) -> bool:
        """Closed by the server, or idle since before `oldest_ok` (monotonic seconds)."""
        return self.closed or self.idle_since < oldest_ok

    def quiet(self) -> bool:
        """Open, and nothing waiting on the socket: no EOF, reset or stray bytes that the event
        loop has not dispatched yet (an idle connection must be silent). One `poll` syscall."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        return self._poll is None or not self._poll.poll(0)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()


class UpstreamResponse:
    """The response to one request: status and headers at once, the body as it arrives.

    Call `aclose()` (or read to the end with `read()`) so the connection returns to the pool.
    """

    def __init__(self, client: UpstreamHTTP, conn: _Connection, timeout: float) -> None:
        self._client = client
        self._conn = conn
        self._timeout = timeout
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.got_bytes = False
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._complete = False
        self._error: UpstreamTransportError | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._close_delimited = False
        self._keep_alive = False

    # -- httptools callbacks ------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in self._raw_headers}
        self.headers = headers
        self._close_delimited = (
            "content-length" not in headers and "transfer-encoding" not in headers
        )
        # Asked here: once the message is complete the parser has reset its state.
        self._keep_alive = self.parser.should_keep_alive() and not self._close_delimited
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused:
            self._paused = True
            self._conn.pause()
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        self._wake()

    # -- connection events ----------------------------------------------------------------------
    def on_connection_lost(self) -> None:
        if self._complete or self._error is not None:
            return
        if self._headers_done and self._close_delimited:
            self._complete = True  # the body ran to the end of the connection
            self._wake()
            return
        where = "in the middle of the body" if self._headers_done else "before answering"
        self.fail("protocol", f"the upstream closed the connection {where}")

    def fail(self, kind: TransportErrorKind, detail: str) -> None:
        if self._error is None and not self._complete:
            self._error = UpstreamTransportError(kind, detail)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Wait for the next parser event, at most `timeout` seconds."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(self._timeout, self._on_timeout, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _on_timeout(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self.fail("timeout", f"no answer from the upstream within {self._timeout:g} s")
            self._conn.close()

    # -- consumer API ---------------------------------------------------------------------------
    async def wait_headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def _next_chunk(self) -> bytes | None:
        """The next piece of the body, or None at its end."""
        while True:
            if self._chunks:
                return self._pop_chunk()
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            await self._wait()

    def _pop_chunk(self) -> bytes:
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= _HIGH_WATER // 2:
            self._paused = False
            self._conn.resume()
        return chunk

    async def read(self) -> bytes:
        """The whole body; the connection goes back to the pool."""
        try:
            parts = []
            while (chunk := await self._next_chunk()) is not None:
                parts.append(chunk)
            return b"".join(parts)
        finally:
            self.aclose_nowait()

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body split on ``\\n`` (a trailing ``\\r`` removed), decoded as UTF-8."""
        pending = b""
        while (chunk := await self._next_chunk()) is not None:
            if b"\n" not in chunk:
                pending += chunk
                continue
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if pending:
            yield pending.rstrip(b"\r").decode("utf-8", "replace")

    async def aiter_line_batches(self) -> AsyncIterator[list[str]]:
        """Like `aiter_lines`, but as lists: every complete line received so far (at least one
        per list, except at the end). Events that arrive together are then relayed with one
        write instead of one per event; nothing waits for more to arrive."""
        pending = b""
        while (chunk := await self._next_chunk()) is not None:
            if self._chunks:  # more already received: take it all now
                rest = [chunk]
                while self._chunks:
                    rest.append(self._pop_chunk())
                chunk = b"".join(rest)
            if b"\n" not in chunk:
                pending += chunk
                continue
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            yield [line.rstrip(b"\r").decode("utf-8", "replace") for line in lines]
        if pending:
            yield [pending.rstrip(b"\r").decode("utf-8", "replace")]

    async def aclose(self) -> None:
        self.aclose_nowait()

    def aclose_nowait(self) -> None:
        """Give the connection back (reusable only if the response was read to its end)."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        conn.response = None
        reusable = self._complete and self._error is None and not conn.closed and self._keep_alive
        self._client.release(conn, reusable=reusable)


class UpstreamHTTP:
    """Pooled HTTP/1.1 client; one per process, shared by every request."""

    def __init__(
        self,
        *,
        max_connections: int,
        timeout: float,
        connect_timeout: float,
        keepalive_expiry: float = 4.0,
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.keepalive_expiry = keepalive_expiry
        self._slots = asyncio.Semaphore(max_connections)
        # Per upstream: idle connections, most recently used on the right (reused first).
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        self._reaper: asyncio.TimerHandle | None = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        accept: bytes = b"application/json",
        timeout: float | None = None,
        authorization: bytes | None = None,
    ) -> UpstreamResponse:
        """Send one request; return once the response headers are in (body still streaming)."""
        if self._closed:
            raise UpstreamTransportError("connect", "the upstream client is closed")
        key, path, host = _target(url)
        wait = self.timeout if timeout is None else timeout
        head = b"".join(
            (
                method.encode("ascii"),
                b" ",
                path,
                b" HTTP/1.1\r\nHost: ",
                host,
                b"\r\nUser-Agent: ",
                _USER_AGENT,
                b"\r\nAccept: ",
                accept,
                b"\r\nAuthorization: " if authorization else b"",
                authorization or b"",
                b"\r\nContent-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode("ascii"),
                b"\r\n\r\n",
            )
        )
        await self._acquire_slot(wait)
        try:
            return await self._send(key, head + body, wait, idempotent=method == "GET")
        except BaseException:
            self._slots.release()
            raise

    async def _acquire_slot(self, wait: float) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamTransportError(
                "timeout", f"all upstream connections stayed busy for {wait:g} s"
            ) from None

    async def _send(
        self, key: tuple[str, str, int], data: bytes, wait: float, *, idempotent: bool
    ) -> UpstreamResponse:
        conn = self._idle_connection(key)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(key)
        response = self._start(conn, data, wait)
        try:
            await response.wait_headers()
        except UpstreamTransportError as exc:
            conn.response = None
            conn.close()
            # The request was written: the server may have read it. Only an idempotent request
            # may be sent again (a POST would run its generation twice).
            if not (idempotent and reused and exc.kind == "protocol" and not response.got_bytes):
                raise
            conn = await self._connect(key)
            response = self._start(conn, data, wait)
            try:
                await response.wait_headers()
            except BaseException:
                conn.response = None
                conn.close()
                raise
        except BaseException:
            conn.response = None
            conn.close()
            raise
        return response

    def _start(self, conn: _Connection, data: bytes, wait: float) -> UpstreamResponse:
        response = UpstreamResponse(self, conn, wait)
        conn.response = response
        assert conn.transport is not None
        conn.transport.write(data)
        return response

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_ok = time.monotonic() - self.keepalive_expiry
        while idle:
            conn = idle.pop()
            if not conn.stale(oldest_ok) and conn.quiet():
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(key), host, port, ssl=tls
                )
        except TimeoutError:
            raise UpstreamTransportError(
                "timeout", f"connecting to the upstream took over {self.connect_timeout:g} s"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            detail = f"cannot connect to the upstream: {exc}"
            raise UpstreamTransportError("connect", detail) from None
        return conn

    def release(self, conn: _Connection, *, reusable: bool) -> None:
        """Return a connection after its response (called once per request)."""
        if reusable and not self._closed:
            conn.idle_since = time.monotonic()
            idle = self._idle.get(conn.key)
            if idle is None:
                idle = self._idle[conn.key] = collections.deque()
            idle.append(conn)
            if self._reaper is None:
                loop = asyncio.get_running_loop()
                self._reaper = loop.call_later(self.keepalive_expiry, self._reap)
        else:
            conn.close()
        self._slots.release()

    def _reap(self) -> None:
        """Close expired idle connections from the least recently used end, with or without
        traffic: after a burst, hundreds of connections would otherwise stay open until the
        server drops them (reuse takes the most recent ones, so the rest never expire by use)."""
        self._reaper = None
        oldest_ok = time.monotonic() - self.keepalive_expiry
        for idle in self._idle.values():
            while idle and idle[0].stale(oldest_ok):
                idle.popleft().close()
        if any(self._idle.values()) and not self._closed:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_later(self.keepalive_expiry, self._reap)

    async def aclose(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
