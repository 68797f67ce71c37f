"""Refit tallies: running totals of refit outcomes, read by `/metrics` in every replica.

Existing finished refits in `profile_events` are counted in, so the exported counters agree with
the audit log from the first scrape after the upgrade.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# A copy, not an import: a migration must keep doing what it did when the code around it changes.
_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_TALLIED = ("activated", "rejected", "insufficient_labels", "failed")


def _le(seconds: float) -> str:
    for bound in _BUCKETS:
        if seconds <= bound:
            return repr(float(bound))
    return "+Inf"


def upgrade() -> None:
    tallies = op.create_table(
        "refit_tallies",
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("le", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("duration_sum", sa.Float, nullable=False),
        sa.Column("last_finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "task", "status", "le", name="pk_refit_tallies"),
    )
    events = sa.table(
        "profile_events",
        sa.column("model", sa.String),
        sa.column("task", sa.String),
        sa.column("kind", sa.String),
        sa.column("status", sa.String),
        sa.column("started_at", sa.DateTime(timezone=True)),
        sa.column("finished_at", sa.DateTime(timezone=True)),
    )
    query = sa.select(
        events.c.model, events.c.task, events.c.status, events.c.started_at, events.c.finished_at
    ).where(
        events.c.kind == "refit",
        events.c.status.in_(_TALLIED),
        events.c.finished_at.is_not(None),
    )
    totals: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"count": 0, "duration_sum": 0.0, "last_finished_at": None}
    )
    rows: Any = op.get_bind().execute(query)
    for model, task, status, started, finished in rows:
        seconds = max((finished - started).total_seconds(), 0.0)
        if not math.isfinite(seconds):
            continue
        row = totals[(model, task, status, _le(seconds))]
        row["count"] += 1
        row["duration_sum"] += seconds
        last: datetime | None = row["last_finished_at"]
        row["last_finished_at"] = finished if last is None or finished > last else last
    if totals:
        op.bulk_insert(
            tallies,
            [
                {"model": m, "task": t, "status": s, "le": le, **values}
                for (m, t, s, le), values in totals.items()
            ],
        )


def downgrade() -> None:
    op.drop_table("refit_tallies")
