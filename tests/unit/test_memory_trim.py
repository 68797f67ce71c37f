"""The idle memory trimmer: trims once per quiet period after traffic, never during it."""

from __future__ import annotations

import asyncio
import platform

import pytest

from service.memory_trim import IdleMemoryTrimmer, ProcessActivity, malloc_trim


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_is_available_on_glibc() -> None:
    assert malloc_trim() is True


async def _wait_for(condition, seconds: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


async def test_trims_only_when_idle_after_traffic() -> None:
    activity = ProcessActivity()
    trimmer = IdleMemoryTrimmer(activity, interval_s=0.02, min_gap_s=1.0, burst_in_flight=50)
    trimmer.start()
    try:
        await asyncio.sleep(0.1)
        assert trimmer.trims == 0  # no traffic yet: nothing to give back

        activity.in_flight, activity.served, activity.peak_in_flight = 1, 5, 1  # one running
        await asyncio.sleep(0.1)
        assert trimmer.trims == 0

        activity.in_flight, activity.served = 0, 6  # the burst is over
        assert await _wait_for(lambda: trimmer.trims == 1)
        assert trimmer.collections == 0  # one request in flight is no burst: no 50 ms gc pause
        await asyncio.sleep(0.1)
        assert trimmer.trims == 1  # once per quiet period, not on every tick

        activity.served, activity.peak_in_flight = 400, 300  # a burst of 300 concurrent
        await asyncio.sleep(0.1)
        assert trimmer.trims == 1  # not again within min_gap_s
        assert await _wait_for(lambda: trimmer.trims == 2)
        assert trimmer.collections == 1 and activity.peak_in_flight == 0
    finally:
        await trimmer.stop()
