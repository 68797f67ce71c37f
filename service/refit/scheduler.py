"""`RefitScheduler`: the in-process trigger of refits (an asyncio task in the app lifespan).

Every `refit_poll_s` it looks for (model, task) pairs with labels newer than the last finished
refit (`profile_events`, shared by all replicas and by `calib refit`), and refits one when

* **N new labels**: at least `refit_new_labels` labels arrived since the last refit, or
* **interval**: at least one new label, and `refit_interval_s` passed since the last refit
  (or since this scheduler started, for a pair never refit: a restart does not refit every
  pair at once).

No new labels, no refit: there is nothing to learn, and the history is not filled with copies.
Each replica runs a scheduler; the refit lease makes one of them do the work, and the job
re-checks the trigger under the lease, so the others find nothing left to do.

Finding candidates is cheap: each poll asks which pairs got labels since the previous poll
(feedback is indexed by time); a pair stays a candidate until it has no new labels.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from service.background import cancel_and_wait
from service.refit.job import FINISHED_STATUSES
from service.refit.runner import RefitRunner
from service.store import Store
from service.store.records import utcnow

__all__ = ["RefitScheduler"]

logger = logging.getLogger(__name__)

_SLACK = timedelta(seconds=5)  # labels committed a little late (clock skew, long transactions)


class RefitScheduler:
    def __init__(self, store: Store, runner: RefitRunner, settings: Any) -> None:
        self.store = store
        self.runner = runner
        self.interval_s = settings.refit_interval_s
        self.new_labels = settings.refit_new_labels
        self.poll_s = settings.refit_poll_s
        self.started_at: datetime = utcnow()
        self._watermark: datetime | None = None
        self._candidates: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.started_at = utcnow()
        self._task = asyncio.create_task(self._loop(), name="refit-scheduler")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # keep scheduling whatever one poll ran into
                logger.exception("refit scheduler: poll failed")
            await asyncio.sleep(self.poll_s)

    async def tick(self) -> list[Any]:
        """One poll: find due pairs and refit them one after the other; returns the outcomes."""
        now = utcnow()
        fresh = await asyncio.to_thread(self.store.label_counts, after=self._watermark)
        self._watermark = now - _SLACK
        self._candidates.update(fresh)
        outcomes = []
        for model, task in sorted(self._candidates):
            due, minimum = await asyncio.to_thread(self._due, model, task, now)
            if minimum == 0:  # nothing new
                self._candidates.discard((model, task))
                continue
            if not due:
                continue
            outcome = await self.runner.run(model, task, trigger="schedule", min_new_labels=minimum)
            outcomes.append(outcome)
            if outcome.status != "busy":
                self._candidates.discard((model, task))
        return outcomes

    def _due(self, model: str, task: str, now: datetime) -> tuple[bool, int]:
        """(due?, the new-label minimum that made it due — 0 when there is nothing new)."""
        last = self.store.last_refit(model, task, statuses=FINISHED_STATUSES)
        new = self.store.count_labels(model, task, after=last.labels_until if last else None)
        if new == 0:
            return False, 0
        if new >= self.new_labels:
            return True, self.new_labels
        reference = (last.finished_at if last else None) or self.started_at
        if (now - reference).total_seconds() >= self.interval_s:
            return True, 1
        return False, 1
