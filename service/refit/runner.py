"""`RefitRunner`: runs refit attempts for the app, off the event loop, and reports them.

Where the work happens (setting `refit_executor`):

* ``process`` (default): a single spawned worker process, kept for the next refit. Loading a
  million labels is mostly Python (row decoding, JSON features); in a thread it would hold the
  GIL in long stretches and the event loop would answer late. A process cannot stall serving.
* ``thread``: `asyncio.to_thread`, no process start-up (about a second, once); fine for small
  windows.

The refit counters are not process state: the job counts each outcome in the store
(`Store.finish_refit`), and `/metrics` exports the store's totals in every replica, so refits by
`calib refit` (a CronJob) count too. When the worker itself dies, the runner records the failure
there. After each attempt the runner drops this replica's cached gauges (and, after an
activation, its cached profile) so the outcome shows at once (other replicas pick it up within
the `ProfileCache` TTL and the metrics cache).

Asynchronous refits (`start`) are tracked here by id while running; their final state is in the
store's audit log, so `status(id)` also answers for a refit started by another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
from collections import OrderedDict
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from service.refit.job import (
    RefitConfig,
    RefitOutcome,
    new_refit_id,
    replica_id,
    run_refit,
    run_refit_in_worker,
)
from service.store import ProfileEvent, Store
from service.store.records import utcnow

if TYPE_CHECKING:
    from service.calibration_health import CalibrationCollector

__all__ = ["RefitRunner", "outcome_from_event"]

logger = logging.getLogger(__name__)

_KEEP_LOCAL = 1000  # finished outcomes remembered by id (the store keeps them all)


def outcome_from_event(event: ProfileEvent) -> RefitOutcome:
    """A refit's state as recorded in the audit log (for ids this process did not run)."""
    duration = 0.0
    if event.finished_at is not None:
        duration = (event.finished_at - event.started_at).total_seconds()
    return RefitOutcome(
        id=event.id,
        model=event.model,
        task=event.task,
        status=event.status,
        reason=event.reason or "",
        trigger=event.trigger or "manual",
        version=event.version,
        n_labels=event.n_labels or 0,
        metrics=event.metrics,
        started_at=event.started_at,
        finished_at=event.finished_at,
        duration_s=duration,
    )


class RefitRunner:
    """Runs refits for one gateway process (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        settings: Any,
        *,
        profiles: Any = None,
        collector: CalibrationCollector | None = None,
    ) -> None:
        self.store = store
        self.url = settings.database_url
        self.config = RefitConfig.from_settings(settings)
        self.executor_kind = settings.refit_executor
        self.profiles = profiles
        self.collector = collector  # /metrics' calibration health: invalidated on activation
        self.replica = replica_id()
        self._executor: Executor | None = None
        self._outcomes: OrderedDict[str, RefitOutcome] = OrderedDict()
        self._tasks: set[asyncio.Task[RefitOutcome]] = set()

    # ------------------------------------------------------------------ public

    async def run(
        self,
        model: str,
        task: str = "default",
        *,
        trigger: str = "manual",
        min_new_labels: int = 0,
        refit_id: str | None = None,
    ) -> RefitOutcome:
        """Run one attempt off the event loop and return its outcome."""
        refit_id = refit_id or new_refit_id()
        requested_at = utcnow()
        self._remember(
            RefitOutcome(refit_id, model, task, "running", "", trigger, started_at=requested_at)
        )
        kwargs = {
            "refit_id": refit_id,
            "trigger": trigger,
            "holder": self.replica,
            "min_new_labels": min_new_labels,
            "requested_at": requested_at,
        }
        try:
            outcome = await self._execute(model, task, kwargs)
        except Exception as error:  # the worker died, the pool broke, ...
            logger.exception("refit %s of %s/%s could not run", refit_id, model, task)
            if isinstance(error, BrokenProcessPool):
                self._executor = None
            outcome = RefitOutcome(
                refit_id,
                model,
                task,
                "failed",
                f"{type(error).__name__}: {error}"[:1000],
                trigger,
                started_at=self._outcomes[refit_id].started_at,
                finished_at=utcnow(),
            )
            await self._record_crash(outcome)
        self._remember(outcome)
        self._report(outcome)
        return outcome

    def start(self, model: str, task: str = "default", *, trigger: str = "manual") -> str:
        """Start an attempt in the background; returns its id (see `status`)."""
        refit_id = new_refit_id()
        task_ = asyncio.create_task(
            self.run(model, task, trigger=trigger, refit_id=refit_id), name=f"refit-{refit_id}"
        )
        self._tasks.add(task_)
        task_.add_done_callback(self._tasks.discard)
        return refit_id

    def status(self, refit_id: str) -> RefitOutcome | None:
        """A refit this process knows (running or finished), else None (ask the store)."""
        return self._outcomes.get(refit_id)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Wait briefly for running refits, then stop the worker process.

        A refit cut short leaves its lease to expire (`refit_lease_ttl_s`) and its audit-log
        entry in status ``running``.
        """
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in list(self._tasks):
            task.cancel()
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if isinstance(executor, ProcessPoolExecutor):
            processes = list((getattr(executor, "_processes", None) or {}).values())
            executor.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                with contextlib.suppress(Exception):
                    process.terminate()
        else:  # pragma: no cover - only process pools are kept
            executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals

    async def _execute(self, model: str, task: str, kwargs: dict[str, Any]) -> RefitOutcome:
        if self.executor_kind == "thread":
            call = functools.partial(run_refit, self.store, self.config, model, task, **kwargs)
            return await asyncio.to_thread(call)
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        call = functools.partial(run_refit_in_worker, self.url, self.config, model, task, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _remember(self, outcome: RefitOutcome) -> None:
        self._outcomes[outcome.id] = outcome
        self._outcomes.move_to_end(outcome.id)
        while len(self._outcomes) > _KEEP_LOCAL:
            self._outcomes.popitem(last=False)

    async def _record_crash(self, outcome: RefitOutcome) -> None:
        """A refit whose worker died: mark its audit-log entry failed and count the failure,
        unless the worker got as far as finishing it (best effort: the store may be the cause)."""
        started = outcome.started_at or utcnow()
        outcome.duration_s = ((outcome.finished_at or started) - started).total_seconds()
        event = ProfileEvent(
            outcome.id,
            outcome.model,
            outcome.task,
            "refit",
            "failed",
            started,
            outcome.trigger,
            reason=outcome.reason,
            holder=self.replica,
            finished_at=outcome.finished_at,
        )
        try:
            await asyncio.to_thread(
                self.store.finish_refit, event, outcome.duration_s, unless_finished=True
            )
        except Exception:
            logger.exception("could not record the failed refit %s in the store", outcome.id)

    def _report(self, outcome: RefitOutcome) -> None:
        logger.info(
            "refit %s %s/%s: %s (%s)",
            outcome.id,
            outcome.model,
            outcome.task,
            outcome.status,
            outcome.reason,
        )
        if outcome.activated:
            self.invalidate(outcome.model)
        elif self.collector is not None:  # the refit counters moved
            self.collector.invalidate()

    def invalidate(self, model: str) -> None:
        """Serve `model`'s new active profile at once in this process."""
        if self.profiles is not None:
            self.profiles.invalidate(model)
        if self.collector is not None:
            self.collector.invalidate()
