"""Profile events: refit attempts (any outcome), manual profile edits and rollbacks.

Revision ID: 0003
Revises: 0002
Create Date: 2025-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "profile_events",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("n_labels", sa.Integer, nullable=True),
        sa.Column("metrics", _JSON, nullable=True),
        sa.Column("holder", sa.String(256), nullable=True),
        sa.Column("labels_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_profile_events"),
    )
    op.create_index(
        "ix_profile_events_model_task_started_at",
        "profile_events",
        ["model", "task", "started_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_profile_events_model_task_started_at", table_name="profile_events")
    op.drop_table("profile_events")
