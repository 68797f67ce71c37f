"""The write-behind prediction writer: timely, bounded, and loses nothing through an outage."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.store import PredictionWriter, Store, StoreUnavailable


async def _until(condition, timeout: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


async def test_records_are_written_within_the_flush_interval(store: Store, make_prediction):
    writer = PredictionWriter(store, flush_interval_s=0.05)
    await writer.start()
    record = make_prediction()
    writer.submit(record)
    assert writer.is_pending(record.id)
    elapsed = await _until(lambda: store.get_prediction(record.id) is not None)
    assert elapsed < 1.0
    await _until(lambda: not writer.is_pending(record.id))
    assert writer.written == 1
    await writer.close()


async def test_a_full_batch_is_written_without_waiting_for_the_interval(
    store: Store, make_prediction
):
    writer = PredictionWriter(store, flush_interval_s=30, batch_size=10)
    await writer.start()
    for _ in range(10):
        writer.submit(make_prediction())
    await _until(lambda: writer.written == 10, timeout=3)
    await writer.close()


async def test_flush_writes_everything_pending(store: Store, make_prediction) -> None:
    writer = PredictionWriter(store, flush_interval_s=30, batch_size=7)
    await writer.start()
    records = [make_prediction() for _ in range(30)]
    for record in records:
        writer.submit(record)
    await writer.flush()
    assert writer.pending == 0
    assert all(store.get_prediction(r.id) is not None for r in records)
    await writer.close()


async def test_close_flushes_what_is_pending(store_url: str, make_prediction) -> None:
    store = Store.open(store_url)
    writer = PredictionWriter(store, flush_interval_s=60)
    await writer.start()
    records = [make_prediction() for _ in range(25)]
    for record in records:
        writer.submit(record)
    await writer.close()
    store.close()
    reopened = Store.open(store_url)
    assert all(reopened.get_prediction(r.id) is not None for r in records)
    reopened.close()


async def test_a_full_buffer_drops_and_counts(store: Store, make_prediction) -> None:
    writer = PredictionWriter(store, buffer_limit=5)  # not started: nothing drains
    for _ in range(8):
        writer.submit(make_prediction())
    assert (writer.pending, writer.dropped) == (5, 3)
    await writer.close()
    assert writer.written == 5


@pytest.fixture
def locked_sqlite(tmp_path: Path) -> Iterator[tuple[Store, sqlite3.Connection]]:
    """A store whose writers wait at most 50 ms, and a second connection that can lock it."""
    path = tmp_path / "calib.db"
    store = Store.open(f"sqlite:///{path}?timeout=0.05")
    locker = sqlite3.connect(path, isolation_level=None)
    yield store, locker
    locker.close()
    store.close()


async def test_an_outage_loses_nothing_buffered(locked_sqlite, make_prediction) -> None:
    store, locker = locked_sqlite
    writer = PredictionWriter(store, flush_interval_s=0.02, batch_size=16)
    await writer.start()
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock: writes fail
    records = [make_prediction() for _ in range(100)]
    for record in records:
        writer.submit(record)
    await _until(lambda: writer.failed_batches >= 2)
    assert not writer.healthy
    assert writer.pending == 100
    with pytest.raises(StoreUnavailable):
        await writer.flush()
    locker.execute("COMMIT")  # the store recovers
    await _until(lambda: writer.pending == 0, timeout=10)
    assert writer.healthy
    assert (writer.written, writer.dropped) == (100, 0)
    assert store.count_predictions() == 100
    await writer.close()


async def test_submit_does_not_block_while_the_store_is_down(locked_sqlite, make_prediction):
    store, locker = locked_sqlite
    writer = PredictionWriter(store, flush_interval_s=0.01, buffer_limit=1000)
    await writer.start()
    locker.execute("BEGIN EXCLUSIVE")
    start = time.perf_counter()
    for _ in range(2000):
        writer.submit(make_prediction())
    assert time.perf_counter() - start < 0.5
    assert (writer.pending, writer.dropped) == (1000, 1000)
    locker.execute("COMMIT")
    await writer.close()
    assert writer.written == 1000


async def test_a_record_the_database_rejects_does_not_sink_its_batch(store: Store, make_prediction):
    writer = PredictionWriter(store, flush_interval_s=30)
    good = [make_prediction() for _ in range(5)]
    bad = make_prediction(features={"not_json": object()})
    for record in [*good[:2], bad, *good[2:]]:
        writer.submit(record)
    await writer.flush()
    assert (writer.written, writer.rejected, writer.pending) == (5, 1, 0)
    assert store.get_prediction(bad.id) is None
    await writer.close()


async def test_non_finite_and_numpy_features_are_stored_portably(store: Store, make_prediction):
    import numpy as np

    record = make_prediction(
        features={"option_logprobs": [-0.1, float("-inf"), np.float32(-2.5)], "n": np.int64(3)}
    )
    store.insert_predictions([record])
    stored = store.get_prediction(record.id)
    assert stored is not None
    assert stored.features == {"option_logprobs": [-0.1, None, -2.5], "n": 3}


async def test_close_gives_up_on_a_dead_store_and_counts_the_loss(locked_sqlite, make_prediction):
    store, locker = locked_sqlite
    writer = PredictionWriter(store, flush_interval_s=0.01, close_timeout_s=0.3)
    await writer.start()
    locker.execute("BEGIN EXCLUSIVE")
    for _ in range(10):
        writer.submit(make_prediction())
    start = time.monotonic()
    await writer.close()
    assert time.monotonic() - start < 3
    assert (writer.pending, writer.dropped, writer.written) == (0, 10, 0)
    writer.submit(make_prediction())  # after close: counted, not raised
    assert writer.dropped == 11
    locker.execute("ROLLBACK")


@pytest.mark.timeout(60)
async def test_close_returns_when_called_right_after_the_writer_was_woken(
    tmp_path: Path, make_prediction
) -> None:
    """`close()` arriving in the few loop turns between a wake-up (a full batch submitted) and the
    background task resuming must still stop the task. On Python 3.11 `asyncio.wait_for` swallowed
    that cancellation: the task kept running and `close()` waited for it forever (the benchmark's
    "stalled" PredictionWriter stage)."""
    store = Store.open(f"sqlite:///{tmp_path / 'calib.db'}")
    try:
        for turns in range(4):  # how many loop turns pass between the wake-up and close()
            writer = PredictionWriter(store, flush_interval_s=30, batch_size=1)
            await writer.start()
            await asyncio.sleep(0)  # the background task now waits to be woken
            record = make_prediction()
            writer.submit(record)  # a full batch: wakes it
            for _ in range(turns):
                await asyncio.sleep(0)
            closing = asyncio.ensure_future(writer.close())
            # Not `wait_for`: cancelling a hung close() would cancel the task and hide the hang.
            done, _ = await asyncio.wait({closing}, timeout=5)
            if not done:
                assert writer._task is not None
                writer._task.cancel()  # clean up, then fail
                await closing
            assert done, f"close() did not return ({turns} loop turns after the wake-up)"
            assert writer._task is None
            assert (writer.written, writer.pending, writer.dropped) == (1, 0, 0)
            assert store.get_prediction(record.id) is not None
    finally:
        store.close()
