"""Prompt-optimization jobs and their evaluations (resumable state).

Revision ID: 0004
Revises: 0003
Create Date: 2025-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "prompt_opt_jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", _JSON, nullable=False),
        sa.Column("items", _JSON, nullable=False),
        sa.Column("state", _JSON, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_prompt_opt_jobs"),
    )
    op.create_index(
        "ix_prompt_opt_jobs_model_task_created_at",
        "prompt_opt_jobs",
        ["model", "task", "created_at"],
    )
    op.create_table(
        "prompt_opt_evaluations",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("prompt_key", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("accuracy", sa.Float, nullable=False),
        sa.Column("ece", sa.Float, nullable=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("ord", sa.Integer, nullable=False),
        sa.Column("parent", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "split", "prompt_key", name="pk_prompt_opt_evaluations"),
    )


def downgrade() -> None:
    op.drop_table("prompt_opt_evaluations")
    op.drop_index("ix_prompt_opt_jobs_model_task_created_at", table_name="prompt_opt_jobs")
    op.drop_table("prompt_opt_jobs")
