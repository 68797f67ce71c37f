"""The profile audit log (refits, manual edits, rollbacks) and the refit tallies it feeds.

A finished refit is stored and counted in one transaction, so `calib_refit_*` metrics read from
the tallies agree with the log on every replica.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from service.store import schema
from service.store.database import Database
from service.store.records import TALLIED_REFIT_STATUSES, ProfileEvent, RefitTally, utcnow
from service.store.rows import json_safe

_E = schema.profile_events
_RT = schema.refit_tallies
#: Upper bounds of the refit-duration buckets the tallies count in (`calib_refit_duration_seconds`).
REFIT_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class EventRepository:
    """Append, update and read profile events; count finished refits."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_event(self, event: ProfileEvent) -> None:
        """Append an entry to the profile audit log."""
        with self._db.tx(write=True) as conn:
            conn.execute(sa.insert(_E).values(**_event_row(event)))

    def update_event(self, event: ProfileEvent) -> None:
        """Store the current state of an event added earlier (e.g. a finished refit)."""
        row = _event_row(event)
        with self._db.tx(write=True) as conn:
            conn.execute(sa.update(_E).where(_E.c.id == event.id).values(**row))

    def get_event(self, id: str) -> ProfileEvent | None:
        with self._db.tx() as conn:
            row = conn.execute(sa.select(_E).where(_E.c.id == id)).mappings().first()
        return None if row is None else ProfileEvent(**row)

    def profile_events(
        self, model: str, task: str = "default", *, limit: int = 50
    ) -> list[ProfileEvent]:
        """The newest `limit` audit-log entries of (model, task), newest first."""
        query = (
            sa.select(_E)
            .where(_E.c.model == model, _E.c.task == task)
            .order_by(_E.c.started_at.desc(), _E.c.id)
            .limit(limit)
        )
        with self._db.tx() as conn:
            return [ProfileEvent(**row) for row in conn.execute(query).mappings()]

    def last_refit(
        self, model: str, task: str = "default", *, statuses: Sequence[str] | None = None
    ) -> ProfileEvent | None:
        """The newest finished refit of (model, task), optionally with one of `statuses`."""
        query = (
            sa.select(_E)
            .where(
                _E.c.model == model,
                _E.c.task == task,
                _E.c.kind == "refit",
                _E.c.finished_at.is_not(None),
            )
            .order_by(_E.c.finished_at.desc())
            .limit(1)
        )
        if statuses is not None:
            query = query.where(_E.c.status.in_(list(statuses)))
        with self._db.tx() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else ProfileEvent(**row)

    def finish_refit(
        self, event: ProfileEvent, duration_s: float, *, unless_finished: bool = False
    ) -> bool:
        """Store a refit's final state and count it in the refit tallies, in one transaction.

        The event is inserted if it was never added (e.g. the worker died before recording it).
        With `unless_finished`, an event already stored with a final status is left alone and
        nothing is counted (returns False): the attempt was finished and counted by whoever ran
        it. Statuses outside `TALLIED_REFIT_STATUSES` are stored but not counted.
        """
        row = _event_row(event)
        with self._db.tx(write=True) as conn:
            stored = conn.execute(sa.select(_E.c.status).where(_E.c.id == event.id)).first()
            if stored is None:
                conn.execute(sa.insert(_E).values(**row))
            elif unless_finished and stored[0] != "running":
                return False
            else:
                conn.execute(sa.update(_E).where(_E.c.id == event.id).values(**row))
            if event.status in TALLIED_REFIT_STATUSES:
                self._tally(conn, event, duration_s)
        return True

    def _tally(self, conn: sa.Connection, event: ProfileEvent, duration_s: float) -> None:
        seconds = duration_s if math.isfinite(duration_s) and duration_s > 0 else 0.0
        bound = next((b for b in REFIT_DURATION_BUCKETS if seconds <= b), math.inf)
        values = {
            "model": event.model,
            "task": event.task,
            "status": event.status,
            "le": "+Inf" if bound == math.inf else repr(float(bound)),
            "count": 1,
            "duration_sum": seconds,
            "last_finished_at": event.finished_at or utcnow(),
        }
        insert = self._db.upsert(_RT).values(values)
        newer = insert.excluded.last_finished_at > _RT.c.last_finished_at
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["model", "task", "status", "le"],
                set_={
                    "count": _RT.c.count + 1,
                    "duration_sum": _RT.c.duration_sum + insert.excluded.duration_sum,
                    "last_finished_at": sa.case(
                        (newer, insert.excluded.last_finished_at), else_=_RT.c.last_finished_at
                    ),
                },
            )
        )

    def refit_tallies(self) -> list[RefitTally]:
        """Every refit tally row (small: models x tasks x statuses x duration buckets)."""
        with self._db.tx() as conn:
            return [RefitTally(**row) for row in conn.execute(sa.select(_RT)).mappings()]


def _event_row(event: ProfileEvent) -> dict[str, Any]:
    row = asdict(event)
    row["metrics"] = json_safe(row["metrics"])
    return row
