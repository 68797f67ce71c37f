"""Prediction features a refit reads in columns: `option_logprobs` (packed float64) and
`answer_index`, moved out of the `features` JSON of every existing row.

A refit of a million labels spent a third of its time decoding that JSON (docs/performance.md).
A value moves only when it has the shape the columns hold exactly (a list of finite floats and
nulls; an int that fits in 32 bits); anything else stays in the JSON, where the store keeps
reading it (service/store/features.py). Rows are converted in pages by primary key, inside the
migration's transaction. The downgrade puts the values back into the JSON and drops the columns.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import math
import sys
from array import array
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Copies, not imports: a migration must keep doing what it did when the code around it changes.
_LOGPROBS, _ANSWER = "option_logprobs", "answer_index"
_INT32 = (-(2**31), 2**31 - 1)
_PAGE = 2000

_predictions = sa.table(
    "predictions",
    sa.column("id", sa.String),
    sa.column("features", sa.JSON().with_variant(JSONB(), "postgresql")),
    sa.column(_LOGPROBS, sa.LargeBinary),
    sa.column(_ANSWER, sa.Integer),
)


def _pack(values: Any) -> bytes | None:
    """Little-endian float64 for a list of finite floats and nulls (null as NaN), else None."""
    if type(values) is not list:
        return None
    packed = array("d")
    for value in values:
        if type(value) is float and math.isfinite(value):
            packed.append(value)
        elif value is None:
            packed.append(math.nan)
        else:
            return None
    if sys.byteorder != "little":  # pragma: no cover
        packed.byteswap()
    return packed.tobytes()


def _unpack(blob: bytes) -> list[float | None]:
    packed = array("d")
    packed.frombytes(bytes(blob))
    if sys.byteorder != "little":  # pragma: no cover
        packed.byteswap()
    return [None if value != value else value for value in packed]


def _pages(where: Any) -> Any:
    """Pages of (id, features, option_logprobs, answer_index) matching `where`, by id."""
    conn = op.get_bind()
    p = _predictions.c
    last: str | None = None
    while True:
        query = sa.select(p.id, p.features, p.option_logprobs, p.answer_index).where(where)
        if last is not None:
            query = query.where(p.id > last)
        rows = conn.execute(query.order_by(p.id).limit(_PAGE)).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _update(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    p = _predictions.c
    op.get_bind().execute(
        sa.update(_predictions)
        .where(p.id == sa.bindparam("pid"))
        .values(
            features=sa.bindparam("f"),
            option_logprobs=sa.bindparam("b"),
            answer_index=sa.bindparam("a"),
        ),
        rows,
    )


def upgrade() -> None:
    op.add_column("predictions", sa.Column(_LOGPROBS, sa.LargeBinary, nullable=True))
    op.add_column("predictions", sa.Column(_ANSWER, sa.Integer, nullable=True))
    for page in _pages(sa.true()):
        moved = []
        for pid, features, _, _ in page:
            if not isinstance(features, dict):
                continue
            rest = dict(features)
            blob = _pack(rest.get(_LOGPROBS))
            if blob is not None:
                del rest[_LOGPROBS]
            index = rest.get(_ANSWER)
            if type(index) is int and _INT32[0] <= index <= _INT32[1]:
                del rest[_ANSWER]
            else:
                index = None
            if blob is not None or index is not None:
                moved.append({"pid": pid, "f": rest, "b": blob, "a": index})
        _update(moved)


def downgrade() -> None:
    p = _predictions.c
    for page in _pages(sa.or_(p.option_logprobs.is_not(None), p.answer_index.is_not(None))):
        merged = []
        for pid, features, blob, index in page:
            values = dict(features) if isinstance(features, dict) else {}
            if blob is not None:
                values[_LOGPROBS] = _unpack(blob)
            if index is not None:
                values[_ANSWER] = int(index)
            merged.append({"pid": pid, "f": values, "b": None, "a": None})
        _update(merged)
    op.drop_column("predictions", _ANSWER)
    op.drop_column("predictions", _LOGPROBS)
