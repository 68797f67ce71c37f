"""A raw HTTP/1.1 upstream on loopback that controls its connections, in its own threads.

`UpstreamDouble` (uvicorn) decides what to answer; this server decides *when a connection ends*,
which is what the upstream client's retry rule is about: it can close a keep-alive connection
after it sat idle for `idle_close_s` (as uvicorn's keep-alive timer does), or read a request in
full and close without answering (a crash mid-request). It runs in threads, so it acts while the
client's event loop is busy, like a real server would.

`answer(n, head, body)` returns the response bytes for the n-th request (1-based, across all
connections), or None to close the connection having read the request. Every request read is
recorded in `requests`; `connections` counts accepted connections, `closed` ended ones.

The gateway lists the upstream's models when it starts (service/known_models.py): a
``GET .../models`` is answered with a list and a closed connection, and is left out of
`requests`, `connections` and `closed`, so the counts are those of the generation requests.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["WireUpstream", "http_json"]

Answer = Callable[[int, bytes, bytes], bytes | None]

#: What ``GET .../models`` answers (the model the retry tests send).
MODEL_LIST = {"object": "list", "data": [{"id": "plain", "object": "model"}]}


def http_json(body: Any, status: int = 200, *, close: bool = False) -> bytes:
    """A complete HTTP/1.1 response with a JSON body (keep-alive unless `close`)."""
    payload = json.dumps(body).encode()
    reason = {200: b"OK", 401: b"Unauthorized"}.get(status, b"Status")
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
        status,
        reason,
        len(payload),
    )
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + payload


class WireUpstream:
    """See the module docstring; `base_url` ends in `/v1`."""

    def __init__(self, answer: Answer, *, idle_close_s: float | None = None) -> None:
        self.answer = answer
        self.idle_close_s = idle_close_s
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.closed = 0  # connections this server has closed (or seen closed)
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._accepting = threading.Thread(target=self._accept, daemon=True, name="wire-accept")
        self._stopped = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> WireUpstream:
        self._accepting.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._accepting.join(timeout=5)

    def paths(self) -> list[str]:
        """`METHOD /path` of every request read, in order."""
        with self._lock:
            return [
                head.split(b"\r\n", 1)[0].rsplit(b" ", 1)[0].decode() for head, _ in self.requests
            ]

    def __enter__(self) -> WireUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        pending = b""
        listing = False
        try:
            while True:
                # Idle between requests: close when the keep-alive timer runs out.
                conn.settimeout(self.idle_close_s)
                try:
                    head, pending = _read_until(conn, pending, b"\r\n\r\n")
                except (TimeoutError, EOFError):
                    return
                conn.settimeout(10.0)
                if head.startswith(b"GET ") and b"/models " in head.split(b"\r\n", 1)[0]:
                    listing = True
                    conn.sendall(http_json(MODEL_LIST, close=True))
                    return
                length = _content_length(head)
                while len(pending) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    pending += chunk
                body, pending = pending[:length], pending[length:]
                with self._lock:
                    self.requests.append((head, body))
                    n = len(self.requests)
                reply = self.answer(n, head, body)
                if reply is None:
                    return  # read in full, never answered
                conn.sendall(reply)
        except OSError:
            return
        finally:
            conn.close()
            with self._lock:
                if conn in self._open:
                    self._open.remove(conn)
                if listing:
                    self.connections -= 1
                else:
                    self.closed += 1

    def wait_closed(self, count: int, timeout: float = 10.0) -> None:
        """Block (the calling thread, deliberately) until `count` connections have ended."""
        deadline = time.monotonic() + timeout
        while self.closed < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.closed} of {count} connections closed")
            time.sleep(0.01)


def _read_until(conn: socket.socket, pending: bytes, marker: bytes) -> tuple[bytes, bytes]:
    while marker not in pending:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError
        pending += chunk
    head, _, rest = pending.partition(marker)
    return head + marker, rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0
