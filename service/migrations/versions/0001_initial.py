"""Initial schema: predictions, feedback, profiles, api_keys.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("options", _JSON, nullable=True),
        sa.Column("idk_option", sa.Text, nullable=True),
        sa.Column("answer", sa.Text, nullable=True),
        sa.Column("raw_confidence", sa.Float, nullable=True),
        sa.Column("confidence", sa.Float, nullable=True),
        sa.Column("features", _JSON, nullable=False),
        sa.Column("profile_version", sa.Integer, nullable=False),
        sa.Column("prompt_hash", sa.String(128), nullable=True),
        sa.Column("abstained", sa.Boolean, nullable=False),
        sa.Column("abstain_reason", sa.String(64), nullable=True),
        sa.Column("request_content", _JSON, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_predictions"),
    )
    op.create_index(
        "ix_predictions_model_task_created_at", "predictions", ["model", "task", "created_at"]
    )
    op.create_index("ix_predictions_tenant_created_at", "predictions", ["tenant", "created_at"])

    op.create_table(
        "feedback",
        sa.Column("prediction_id", sa.String(128), nullable=False),
        sa.Column("correct", sa.Boolean, nullable=False),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("true_index", sa.Integer, nullable=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name="fk_feedback_prediction_id_predictions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("prediction_id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_created_at", "feedback", ["created_at"])

    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("metrics", _JSON, nullable=True),
        sa.Column("data", _JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("activated_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_profiles"),
        sa.UniqueConstraint("model", "task", "version", name="uq_profiles_model_task_version"),
    )
    op.create_index("ix_profiles_model_task_active", "profiles", ["model", "task", "active"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_name", "api_keys", ["name"])


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("profiles")
    op.drop_table("feedback")
    op.drop_table("predictions")
