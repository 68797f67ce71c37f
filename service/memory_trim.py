"""Give freed heap memory back to the OS once the gateway goes quiet after a burst.

Why: after 1,000 concurrent streams every per-request object is freed, but glibc's allocator
keeps the freed pages in its arenas, so the gateway's RSS stayed at its peak (252 MB against
154 MB idle in the soak, tests/reliability/test_load.py) — indistinguishable from a leak on a
dashboard and counted against the container's memory limit. `malloc_trim(0)` hands free pages
back. It runs only when no HTTP request is in flight and some were served since the last trim,
checked every `interval_s` and at most once per `min_gap_s`, so it never competes with a burst
and costs sparse traffic next to nothing (a trim takes 0.03–0.2 ms here). Only after a real burst
(at least `burst_in_flight` requests in flight at once) does it first run a full `gc.collect()`:
the cyclic garbage a burst leaves (tasks, frames, tracebacks) otherwise pins ~20 MB until the
next full collection, but a collection takes ~50 ms on the gateway's heap, too long to run after
every quiet spell. On a libc without `malloc_trim` (musl) only that collection runs.

With CPython's default allocator most freed memory sits in its own arenas, which a trim cannot
return; with `PYTHONMALLOC=malloc` it can (docs/performance.md §5).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import math
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from service.background import cancel_and_wait

__all__ = [
    "PROCESS_ACTIVITY",
    "ActivityCounter",
    "IdleMemoryTrimmer",
    "ProcessActivity",
    "malloc_trim",
]


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def malloc_trim() -> bool:
    """Return free heap pages to the OS; False if this libc cannot."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


class ProcessActivity:
    """HTTP requests in flight and served in this process (heap and trim are per process)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.served = 0
        self.peak_in_flight = 0  # since the trimmer last looked


PROCESS_ACTIVITY = ProcessActivity()


class ActivityCounter:
    """Outermost ASGI middleware: keeps `PROCESS_ACTIVITY` up to date."""

    def __init__(self, app: ASGIApp, activity: ProcessActivity = PROCESS_ACTIVITY) -> None:
        self.app = app
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        activity = self.activity
        activity.in_flight += 1
        if activity.in_flight > activity.peak_in_flight:
            activity.peak_in_flight = activity.in_flight
        try:
            await self.app(scope, receive, send)
        finally:
            activity.in_flight -= 1
            activity.served += 1


class IdleMemoryTrimmer:
    """Background task: trim once per quiet period that follows traffic."""

    def __init__(
        self,
        activity: ProcessActivity = PROCESS_ACTIVITY,
        interval_s: float = 2.0,
        min_gap_s: float = 10.0,
        burst_in_flight: int = 100,
    ) -> None:
        self.activity = activity
        self.interval_s = interval_s
        self.min_gap_s = min_gap_s
        self.burst_in_flight = burst_in_flight
        self.collections = 0
        self.trims = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        trimmed_at = self.activity.served
        last = -math.inf
        while True:
            await asyncio.sleep(self.interval_s)
            activity = self.activity
            quiet = activity.in_flight == 0 and activity.served != trimmed_at
            if quiet and loop.time() - last >= self.min_gap_s:
                trimmed_at = activity.served
                last = loop.time()
                if activity.peak_in_flight >= self.burst_in_flight:
                    gc.collect()
                    self.collections += 1
                activity.peak_in_flight = activity.in_flight
                malloc_trim()
                self.trims += 1
