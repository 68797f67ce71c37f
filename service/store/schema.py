"""The store's tables (SQLAlchemy Core). Alembic migrations in `service/migrations` create them.

A test compares this metadata with the migrated schema, so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always UTC and always timezone-aware in Python.

    SQLite has no timezone support, so values are stored as naive UTC and made aware on load.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("options", JSONType, nullable=True),
    sa.Column("idk_option", sa.Text, nullable=True),
    sa.Column("answer", sa.Text, nullable=True),
    sa.Column("raw_confidence", sa.Float, nullable=True),
    sa.Column("confidence", sa.Float, nullable=True),
    # The `features` dict: its hot keys in columns a refit loads as arrays, every other key in
    # `features` (JSON). See service/store/features.py.
    sa.Column("features", JSONType, nullable=False),
    sa.Column("option_logprobs", sa.LargeBinary, nullable=True),
    sa.Column("answer_index", sa.Integer, nullable=True),
    sa.Column("profile_version", sa.Integer, nullable=False),
    sa.Column("prompt_hash", sa.String(128), nullable=True),
    sa.Column("abstained", sa.Boolean, nullable=False),
    sa.Column("abstain_reason", sa.String(64), nullable=True),
    sa.Column("request_content", JSONType, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "model", "task", "created_at"),
    sa.Index(None, "tenant", "created_at"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column(
        "prediction_id",
        sa.String(128),
        sa.ForeignKey("predictions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("correct", sa.Boolean, nullable=False),
    sa.Column("label", sa.Text, nullable=True),
    sa.Column("true_index", sa.Integer, nullable=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "created_at"),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("metrics", JSONType, nullable=True),
    sa.Column("data", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("activated_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("model", "task", "version"),
    sa.Index(None, "model", "task", "active"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(32), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Index(None, "name"),
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("holder", sa.String(256), nullable=False),
    sa.Column("acquired_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

# Audit log of profile changes: refit attempts (any outcome), manual edits and rollbacks.
# Refit rows double as the status of an asynchronous refit (`GET /v1/calibration/refits/{id}`)
# and as the "last refit" the scheduler and the metrics read (see docs/refit.md).
profile_events = sa.Table(
    "profile_events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("trigger", sa.String(32), nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("n_labels", sa.Integer, nullable=True),
    sa.Column("metrics", JSONType, nullable=True),
    sa.Column("holder", sa.String(256), nullable=True),
    sa.Column("labels_until", UTCDateTime, nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Index(None, "model", "task", "started_at"),
)

# Refit outcomes as running totals, one row per (model, task, status, duration bucket): what
# `/metrics` exports as `calib_refits_total`, `calib_refit_failures_total` and
# `calib_refit_duration_seconds`, whichever process ran the refit (a replica, `calib refit` from a
# CronJob). A refit adds 1 to one row (an atomic upsert), so the table stays small (models x tasks
# x statuses x buckets) and a scrape reads it whole. `le` is the upper bound of the duration
# bucket the attempts fell in (Prometheus' spelling: "0.5", "+Inf"), not cumulative.
refit_tallies = sa.Table(
    "refit_tallies",
    metadata,
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("task", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(32), primary_key=True),
    sa.Column("le", sa.String(16), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("duration_sum", sa.Float, nullable=False),
    sa.Column("last_finished_at", UTCDateTime, nullable=False),
)

# Prompt-optimization jobs (docs/prompt-optimization.md): the job row holds its configuration,
# the labeled items it replays, the paraphrase calls so far and the result; every evaluation is
# a row of its own, written right after it is computed, so a crashed job resumes where it was
# and never evaluates a candidate twice (the primary key forbids it).
prompt_opt_jobs = sa.Table(
    "prompt_opt_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("task", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("config", JSONType, nullable=False),
    sa.Column("items", JSONType, nullable=False),
    sa.Column("state", JSONType, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Index(None, "model", "task", "created_at"),
)

prompt_opt_evaluations = sa.Table(
    "prompt_opt_evaluations",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("split", sa.String(16), primary_key=True),
    sa.Column("prompt_key", sa.String(64), primary_key=True),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("accuracy", sa.Float, nullable=False),
    sa.Column("ece", sa.Float, nullable=True),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("ord", sa.Integer, nullable=False),
    sa.Column("parent", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
)
