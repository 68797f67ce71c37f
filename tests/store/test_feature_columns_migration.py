"""Migration 0006: existing rows' hot features move into their columns with identical values,
and the downgrade puts them back into the JSON (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import command

from service.store import Store
from service.store.engine import alembic_config, create_store_engine, migrate
from service.store.features import pack_logprobs
from tests.store.legacy import LEGACY_PREDICTIONS, insert_legacy
from tests.store.test_feature_columns import _same

# Features as the JSON-only store held them (already `json_safe`).
SHAPES: list[tuple[dict[str, Any], bool, bool]] = [
    (
        {
            "options": ["A", "B"],
            "option_logprobs": [-0.2, None],
            "truncated": [False, True],
            "answer": "A",
            "answer_index": 0,
            "position": 1,
            "scoring": "likelihood",
        },
        True,
        True,
    ),
    ({"option_logprobs": [], "answer_index": None, "answer": None}, True, False),
    ({"option_logprobs": [0, -1.5], "answer_index": "1"}, False, False),
    ({"option_logprobs": [-1.0, "x"], "answer_index": 2**35}, False, False),
    ({"option_logprobs": None, "answer_index": False}, False, False),
    ({"mean_logprob": -0.4, "min_logprob": None, "n_tokens": 5}, False, False),
    ({}, False, False),
]
N_BULK = 2100  # more than one page of the migration's batches


def _downgrade(engine: sa.Engine, revision: str) -> None:
    cfg = alembic_config()
    with engine.connect() as conn, conn.begin():
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _raw(engine: sa.Engine, columns: bool) -> dict[str, tuple[Any, ...]]:
    table = LEGACY_PREDICTIONS
    cols: list[Any] = [table.c.id, table.c.features]
    if columns:
        cols += [sa.column("option_logprobs"), sa.column("answer_index")]
    with engine.connect() as conn:
        return {row[0]: tuple(row[1:]) for row in conn.execute(sa.select(*cols))}


def test_existing_rows_are_converted_with_identical_values_and_back(
    store_url: str, make_prediction
) -> None:
    engine = create_store_engine(store_url)
    migrate(engine, "0005")
    shaped = [make_prediction(id=f"shape-{i}", features=f) for i, (f, _, _) in enumerate(SHAPES)]
    bulk = [
        make_prediction(
            id=f"bulk-{i:05d}",
            features={"option_logprobs": [-i / 7, -1.0 - i, None], "answer_index": i % 3},
        )
        for i in range(N_BULK)
    ]
    with engine.begin() as conn:
        insert_legacy(conn, shaped + bulk)
    legacy = _raw(engine, columns=False)
    engine.dispose()

    store = Store.open(store_url)  # upgrades to head
    try:
        for record in shaped + bulk[::300] + bulk[-1:]:
            got = store.get_prediction(record.id)
            assert got is not None
            assert _same(got.features, legacy[record.id][0]), record.id
            assert got == record
        stored = _raw(store.engine, columns=True)
        for i, (features, in_blob, in_int) in enumerate(SHAPES):
            rest, blob, index = stored[f"shape-{i}"]
            assert (blob is not None, index is not None) == (in_blob, in_int)
            if in_blob:
                assert bytes(blob) == pack_logprobs(features["option_logprobs"])
                assert "option_logprobs" not in rest
            if in_int:
                assert index == features["answer_index"] and "answer_index" not in rest
        for record in bulk:
            rest, blob, index = stored[record.id]
            assert rest == {} and index == record.features["answer_index"]
            assert bytes(blob) == pack_logprobs(record.features["option_logprobs"])

        _downgrade(store.engine, "0005")
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns("predictions")}
        assert not columns & {"option_logprobs", "answer_index"}
        back = _raw(store.engine, columns=False)
        assert back.keys() == legacy.keys()
        assert all(_same(back[id][0], legacy[id][0]) for id in legacy)
    finally:
        store.close()

    again = Store.open(store_url)  # and up again: the same values
    try:
        for record in shaped[:1] + bulk[-1:]:
            assert again.get_prediction(record.id) == record
    finally:
        again.close()
