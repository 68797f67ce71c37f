"""Prompt-optimization jobs (migration 0004): the job row and one evaluation row per
(split, candidate). The evaluation's primary key makes scoring a candidate twice impossible;
`service.prompt_opt.job` owns what the rows mean."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from service.store import schema
from service.store.database import Database
from service.store.records import utcnow

_J = schema.prompt_opt_jobs
_V = schema.prompt_opt_evaluations


class PromptOptJobRepository:
    """Rows of prompt-optimization jobs and their evaluations, as mappings."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create_job(self, **values: Any) -> None:
        """Insert a job row (`values`: its columns; `created_at`/`updated_at` default to now)."""
        now = utcnow()
        row = {"created_at": now, "updated_at": now, **values}
        with self._db.tx(write=True) as conn:
            conn.execute(sa.insert(_J).values(**row))

    def get_job(self, job_id: str) -> Any | None:
        """The job's row (a mapping of its columns), or None."""
        with self._db.tx() as conn:
            return conn.execute(sa.select(_J).where(_J.c.id == job_id)).mappings().first()

    def update_job(self, job_id: str, **values: Any) -> None:
        """Set some columns of the job (and `updated_at`)."""
        with self._db.tx(write=True) as conn:
            conn.execute(
                sa.update(_J).where(_J.c.id == job_id).values(updated_at=utcnow(), **values)
            )

    def evaluations(self, job_id: str) -> list[Any]:
        """The job's evaluation rows, oldest first."""
        query = sa.select(_V).where(_V.c.job_id == job_id).order_by(_V.c.created_at)
        with self._db.tx() as conn:
            return list(conn.execute(query).mappings().all())

    def add_evaluation(self, job_id: str, **values: Any) -> None:
        """Insert one evaluation row (`values`: its columns besides `job_id`, `created_at`)."""
        with self._db.tx(write=True) as conn:
            conn.execute(sa.insert(_V).values(job_id=job_id, created_at=utcnow(), **values))
