"""A small closed-loop HTTP/1.1 load generator: `concurrency` keep-alive connections, each
sending the next request as soon as the previous answer is complete.

Raw asyncio streams on uvloop with one pre-encoded request, so the generator costs a few tens of
microseconds per request (httpx costs about a millisecond, which on a 2-core machine would make
the generator, not the server under test, the bottleneck). It understands exactly what it needs:
`Content-Length` bodies and chunked bodies (server-sent events). Per request it records the
latency to the complete answer and, for chunked answers, the time to the first non-empty chunk
(time to first token, TTFT).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, complete answer
    ttfts: list[float] = field(default_factory=list)  # seconds, first body chunk (chunked only)
    elapsed: float = 0.0
    errors: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


def _request_bytes(url: str, body: dict, headers: dict[str, str] | None = None) -> bytes:
    parts = urlsplit(url)
    payload = json.dumps(body, separators=(",", ":")).encode()
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"host: {parts.netloc}",
        "content-type: application/json",
        f"content-length: {len(payload)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _read_answer(reader: asyncio.StreamReader, t0: float) -> tuple[int, float | None, bytes]:
    """(status, TTFT or None, last bytes of the body) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        eol = lower.find(b"\r\n", at)
        body = await reader.readexactly(int(lower[at + 15 : eol]))
        return status, None, body
    if b"transfer-encoding: chunked" not in lower:
        raise RuntimeError(f"unsupported response framing: {head!r}")
    ttft = None
    tail = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, ttft, tail
        chunk = await reader.readexactly(size + 2)
        if ttft is None:
            ttft = time.perf_counter() - t0
        tail = (tail + chunk[:-2])[-4096:]


async def run_load(
    url: str,
    body: dict,
    requests: int,
    concurrency: int,
    *,
    warmup: int = 0,
    headers: dict[str, str] | None = None,
    check: bytes | None = None,
    max_seconds: float = 120.0,
) -> LoadResult:
    """Send `requests` requests (after `warmup` unmeasured ones) over `concurrency` connections.

    `check`: bytes every successful body must contain (e.g. b'"calibration"'); a non-200 or a
    body without it counts as an error. Stops early (counting what finished) after `max_seconds`.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    raw = _request_bytes(url, body, headers)
    result = LoadResult()
    deadline = time.perf_counter() + max_seconds
    conns = [await asyncio.open_connection(host, port, limit=1 << 20) for _ in range(concurrency)]

    async def worker(reader, writer, left: list[int], measured: bool) -> None:
        while left[0] > 0 and time.perf_counter() < deadline:
            left[0] -= 1
            t0 = time.perf_counter()
            writer.write(raw)
            status, ttft, tail = await _read_answer(reader, t0)
            latency = time.perf_counter() - t0
            if status != 200 or (check is not None and check not in tail):
                result.errors += 1
                if result.errors == 1:
                    print(f"  {url}: HTTP {status}: {tail[-300:]!r}", flush=True)
                continue
            if measured:
                result.latencies.append(latency)
                if ttft is not None:
                    result.ttfts.append(ttft)

    try:
        # Warm-up on every connection (pools, caches), then the measured run.
        left = [max(warmup, concurrency)]
        await asyncio.gather(*(worker(r, w, left, False) for r, w in conns))
        left = [requests]
        start = time.perf_counter()
        await asyncio.gather(*(worker(r, w, left, True) for r, w in conns))
        result.elapsed = time.perf_counter() - start
    finally:
        for _, w in conns:
            w.close()
    return result
