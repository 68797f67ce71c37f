"""`PredictionWriter`: write predictions behind the response, in batches, off the event loop.

Serving never waits on the database: `submit` only appends to a bounded in-memory buffer. A
background task writes batches (in a worker thread) at least every `flush_interval_s`, sooner
when a full batch is waiting. When the store fails, records stay buffered and the writer retries
with exponential backoff; when the buffer is full, new records are dropped and counted.
A record that the database rejects by itself (not an outage) is dropped alone, not its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.background import cancel_and_wait
from service.store.errors import StoreError, StoreUnavailable
from service.store.records import PredictionRecord

if TYPE_CHECKING:
    from service.store.store import Store

logger = logging.getLogger(__name__)

_MAX_BACKOFF_S = 5.0


class PredictionWriter:
    """Write-behind buffer of `PredictionRecord`s in front of `Store.insert_predictions`."""

    def __init__(
        self,
        store: Store,
        *,
        flush_interval_s: float = 0.1,
        batch_size: int = 256,
        buffer_limit: int = 50_000,
        close_timeout_s: float = 10.0,
        on_flush: Callable[[PredictionWriter], None] | None = None,
        before_write: Callable[[list[PredictionRecord]], None] | None = None,
    ) -> None:
        self.store = store
        self.on_flush = on_flush  # called after each background flush (e.g. metrics sync)
        # Called with each batch on the write thread before the INSERT (it may add features:
        # the input-shift gauge embeds request inputs there, off the request path).
        self.before_write = before_write
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.buffer_limit = buffer_limit
        self.close_timeout_s = close_timeout_s
        # Counters, read by the metrics module.
        self.written = 0
        self.dropped = 0  # buffer full, or lost at shutdown
        self.rejected = 0  # refused by the database on their own (bad data)
        self.failed_batches = 0
        # id -> record, in submission order; a record leaves only once committed.
        self._pending: dict[str, PredictionRecord] = {}
        self._lock = asyncio.Lock()  # one batch in flight at a time
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._backoff_s = 0.0
        self._retry_at = 0.0

    # ------------------------------------------------------------------ public API

    @property
    def pending(self) -> int:
        """Records submitted but not yet committed."""
        return len(self._pending)

    @property
    def healthy(self) -> bool:
        """False while the last write failed and records wait for a retry."""
        return self._backoff_s == 0.0

    async def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name="prediction-writer")

    def submit(self, record: PredictionRecord) -> None:
        """Queue `record` for writing. Never blocks, never raises."""
        try:
            if self._closed or (
                len(self._pending) >= self.buffer_limit and record.id not in self._pending
            ):
                self.dropped += 1
                return
            self._pending[record.id] = record
            if len(self._pending) >= self.batch_size:
                self._notify()
        except Exception:  # pragma: no cover - submit must never break a response
            logger.exception("prediction writer: submit failed")
            self.dropped += 1

    def is_pending(self, id: str) -> bool:
        return id in self._pending

    async def flush(self) -> None:
        """Write everything pending now; raises `StoreUnavailable` if the store fails."""
        await self._drain(raise_errors=True)

    async def close(self) -> None:
        """Stop the background task and write what is pending (bounded by `close_timeout_s`)."""
        self._closed = True
        await cancel_and_wait(self._task)
        self._task = None
        deadline = time.monotonic() + self.close_timeout_s
        while self._pending:
            try:
                await self._drain(raise_errors=True)
            except StoreError:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if self._pending:
            lost = len(self._pending)
            self.dropped += lost
            self._pending.clear()
            logger.error("prediction writer: store unavailable at shutdown, %d lost", lost)

    # ------------------------------------------------------------------ internals

    def _notify(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while not self._closed:  # also stops if a cancellation from `close()` is ever swallowed
            delay = self.flush_interval_s
            if self._backoff_s:
                delay = max(delay, self._retry_at - time.monotonic())
            # Not `asyncio.wait_for(self._wake.wait(), ...)`: on Python 3.11 it wraps the wait in
            # a task and, if cancelled after that task finished (woken) but before this one
            # resumed, returns normally: the cancellation from `close()` was lost, this loop kept
            # going and `close()` waited for it forever. `asyncio.timeout` cancels in place.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay, 0.0)):
                    await self._wake.wait()
            self._wake.clear()
            if self._backoff_s and time.monotonic() < self._retry_at:
                continue
            try:
                await self._drain(raise_errors=False, whole=False)
            except Exception:  # pragma: no cover - keep the writer alive whatever happens
                logger.exception("prediction writer: unexpected error")
            if self.on_flush is not None:
                try:
                    self.on_flush(self)
                except Exception:  # pragma: no cover - a hook must not stop the writer
                    logger.exception("prediction writer: on_flush hook failed")

    async def _drain(self, *, raise_errors: bool, whole: bool = True) -> None:
        """Write what is pending in batches: everything (`whole`), or — the background loop —
        one batch and then only full ones; a partial rest waits for the next tick.

        Why not everything every tick: under load the next batch started the moment the last
        one committed, with the few records that came meanwhile (~30 at 2,000 requests/s), and
        the per-batch cost (thread hand-off, statement, commit) was then a third of the
        writer's CPU per prediction. Waiting for the tick lets a batch fill up; no record
        waits longer than before (at most one interval, plus the write).
        """
        async with self._lock:
            first = True
            while self._pending and (whole or first or len(self._pending) >= self.batch_size):
                first = False
                batch = list(_take(self._pending, self.batch_size))
                try:
                    await asyncio.to_thread(self._insert, batch)
                except StoreUnavailable as error:
                    self._failed(error)
                    if raise_errors:
                        raise
                    return
                except StoreError as error:
                    # Not an outage: some record is unacceptable. Write them one by one.
                    logger.warning("prediction writer: batch rejected (%s), retrying singly", error)
                    if not await self._write_singly(batch, raise_errors=raise_errors):
                        return
                    continue
                self._committed(batch)
                self._backoff_s = 0.0

    async def _write_singly(self, batch: list[PredictionRecord], *, raise_errors: bool) -> bool:
        for record in batch:
            try:
                await asyncio.to_thread(self._insert, [record])
            except StoreUnavailable as error:
                self._failed(error)
                if raise_errors:
                    raise
                return False
            except StoreError as error:
                logger.error("prediction writer: dropping prediction %s: %s", record.id, error)
                self.rejected += 1
                self._forget(record)
                continue
            self._committed([record])
        self._backoff_s = 0.0
        return True

    def _insert(self, batch: list[PredictionRecord]) -> None:
        if self.before_write is not None:
            try:
                self.before_write(batch)
            except Exception:  # a hook must not lose predictions
                logger.exception("prediction writer: before_write hook failed")
        self.store.insert_predictions(batch)

    def _committed(self, batch: list[PredictionRecord]) -> None:
        for record in batch:
            self._forget(record)
        self.written += len(batch)

    def _forget(self, record: PredictionRecord) -> None:
        if self._pending.get(record.id) is record:
            del self._pending[record.id]

    def _failed(self, error: Exception) -> None:
        self.failed_batches += 1
        self._backoff_s = min(_MAX_BACKOFF_S, max(self.flush_interval_s, self._backoff_s * 2))
        self._retry_at = time.monotonic() + self._backoff_s
        logger.warning(
            "prediction writer: store unavailable (%s); %d pending, retry in %.1fs",
            error,
            len(self._pending),
            self._backoff_s,
        )


def _take(pending: dict[str, PredictionRecord], n: int):  # type: ignore[no-untyped-def]
    for index, record in enumerate(pending.values()):
        if index >= n:
            return
        yield record
