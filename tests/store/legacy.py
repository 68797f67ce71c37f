"""Rows as the store wrote them before revision 0006: every feature in the `features` JSON.

Used to test the upgrade of older databases (the current code writes the hot features into
their own columns, which an older schema does not have).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from service.store import PredictionRecord
from service.store.rows import json_safe
from service.store.schema import predictions

_NEW_COLUMNS = {"option_logprobs", "answer_index"}
# The predictions table up to revision 0005 (same types, so values are encoded as they were).
LEGACY_PREDICTIONS = sa.Table(
    "predictions",
    sa.MetaData(),
    *(
        sa.Column(column.name, column.type, primary_key=column.primary_key)
        for column in predictions.columns
        if column.name not in _NEW_COLUMNS
    ),
)


def legacy_row(record: PredictionRecord) -> dict[str, Any]:
    row = asdict(record)
    for name in ("features", "options", "request_content"):
        row[name] = json_safe(row[name] if name != "features" else row[name] or {})
    return row


def insert_legacy(conn: sa.Connection, records: list[PredictionRecord]) -> None:
    """Insert `records` in the pre-0006 layout (features all JSON)."""
    conn.execute(sa.insert(LEGACY_PREDICTIONS), [legacy_row(record) for record in records])
