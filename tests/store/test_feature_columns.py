"""Prediction `features` keep round-tripping exactly while their hot keys live in columns.

The store writes `option_logprobs` (a list of floats/nulls) packed into a float64 column and an
int `answer_index` into an integer column; every other key, and a hot key of another shape, stays
JSON. Whatever the layout, `get_prediction`, `labeled_predictions` and `labeled_rows` give back
what the JSON-only store gave: the `json_safe` value (non-finite floats as None, numpy values as
Python numbers, tuples as lists), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from service.store import FeedbackItem, LabeledBatch, Store
from service.store.features import pack_logprobs, split_features, unpack_logprobs
from service.store.rows import json_safe
from service.store.schema import predictions

# (features as given, whether option_logprobs / answer_index go to their columns)
CASES: list[tuple[str, dict[str, Any], bool, bool]] = [
    (
        "gateway options answer",
        {
            "options": ["A", "B", "C"],
            "option_logprobs": [-0.105360515657826, -2.4079456086518722, -4.1],
            "truncated": [False, True, False],
            "answer": "A",
            "answer_index": 0,
            "position": 2,
            "scoring": "path",
        },
        True,
        True,
    ),
    (
        "-inf, +inf and NaN log-probs are null, as in JSON",
        {
            "option_logprobs": [-0.1, float("-inf"), float("inf"), float("nan"), None],
            "answer_index": 4,
        },
        True,
        True,
    ),
    (
        "no option named",
        {"option_logprobs": [], "answer_index": None, "position": None},
        True,
        False,
    ),
    (
        "numpy values",
        {
            "option_logprobs": np.array([-0.5, -1.25], dtype=np.float32),
            "answer_index": np.int64(1),
            "first_token_prob": np.float64(0.75),
        },
        True,
        True,
    ),
    ("a tuple of floats", {"option_logprobs": (-1.0, -2.0), "answer_index": 1}, True, True),
    ("ints stay ints (JSON)", {"option_logprobs": [0, -1.5], "answer_index": 0}, False, True),
    ("strings stay strings", {"option_logprobs": ["x", -1.0], "answer_index": "1"}, False, False),
    ("a bool is not an index", {"option_logprobs": [-1.0], "answer_index": True}, True, False),
    ("beyond int32", {"option_logprobs": [-1.0], "answer_index": 2**40}, True, False),
    ("not a list", {"option_logprobs": {"A": -1.0}, "answer_index": -3}, False, True),
    (
        "other branches' keys",
        {
            "mean_logprob": -0.3,
            "min_logprob": float("-inf"),
            "n_tokens": 7,
            "prediction_set": ["A", "C"],
            "embedding": [0.1, -0.2, 3.5e-5, 12345.678],
            "visual": {"reliance": 0.4, "nested": [None, {"x": float("nan")}]},
            "note": "ünïcode ✓",
        },
        False,
        False,
    ),
    ("nothing", {}, False, False),
]


def _stored(store: Store, id: str) -> tuple[dict[str, Any], bytes | None, int | None]:
    p = predictions.c
    query = sa.select(sa.cast(p.features, sa.Text), p.option_logprobs, p.answer_index)
    with store.engine.connect() as conn:
        text, blob, index = conn.execute(query.where(p.id == id)).one()
    return json.loads(text), blob, index


@pytest.mark.parametrize(
    ("name", "features", "in_blob", "in_int"), CASES, ids=[c[0] for c in CASES]
)
def test_features_round_trip_as_json_did(
    store: Store, make_prediction, name: str, features: dict[str, Any], in_blob: bool, in_int: bool
) -> None:
    expected = json.loads(json.dumps(json_safe(features)))  # what the JSON-only store returned
    record = make_prediction(features=features)
    store.insert_predictions([record])
    store.record_feedback([FeedbackItem(record.id, correct=True)], "acme", False)

    got = store.get_prediction(record.id)
    assert got is not None
    assert _same(got.features, expected)
    [labeled] = store.labeled_predictions("gemma-3-270m")
    assert _same(labeled.prediction.features, expected)
    [batch] = list(store.labeled_rows("gemma-3-270m"))
    assert isinstance(batch, LabeledBatch)
    assert _same(batch.features(0), expected)
    [row] = list(batch)
    assert _same(row.features, expected)
    for key in (*expected, "absent"):
        assert _same(batch.values(key), [expected.get(key)])

    # The fast path engaged exactly for the usual shapes, and a key is never stored twice.
    rest, blob, index = _stored(store, record.id)
    assert (blob is not None, index is not None) == (in_blob, in_int)
    assert ("option_logprobs" in rest) == ("option_logprobs" in expected and not in_blob)
    assert ("answer_index" in rest) == ("answer_index" in expected and not in_int)


def _same(a: Any, b: Any) -> bool:
    """Equal, with the type of every number kept (1 is not 1.0 here)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_packed_log_probs_keep_every_bit() -> None:
    values = [
        -0.0,
        -5e-324,
        -1e-300,
        -0.1,
        -1 / 3,
        -745.1332191019411,
        None,
        -1.7976931348623157e308,
    ]
    blob = pack_logprobs(values)
    assert blob is not None and len(blob) == 8 * len(values)
    back = unpack_logprobs(blob)
    assert [None if v is None else v.hex() for v in back] == [
        None if v is None else v.hex() for v in values
    ]
    assert math.copysign(1.0, back[0]) == -1.0  # -0.0 stays -0.0


def test_split_puts_each_hot_key_in_one_place() -> None:
    rest, blob, index = split_features({"option_logprobs": [-1.0], "answer_index": 0, "k": 1})
    assert rest == {"k": 1} and blob == pack_logprobs([-1.0]) and index == 0
    assert split_features(None) == ({}, None, None)


def test_a_hot_column_wins_over_a_stale_json_copy(store: Store, make_prediction) -> None:
    """A row edited by hand to hold a hot key in both places reads the column (the refit does
    the same), so the two readers never disagree."""
    record = make_prediction()
    store.insert_predictions([record])
    p = predictions.c
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(predictions)
            .where(p.id == record.id)
            .values(features={"option_logprobs": [-9.0], "answer_index": 3, "k": "v"})
        )
    got = store.get_prediction(record.id)
    assert got is not None
    assert got.features == {**record.features, "k": "v"}


@pytest.mark.parametrize("url", ["memory", "file"])
def test_other_keys_are_read_while_the_rows_stream(url: str, tmp_path, make_prediction) -> None:
    """The other keys' JSON is not part of the streamed rows (the refit never needs it); asked
    for mid-stream it is read on the streaming connection — also with SQLite in memory, where
    a second transaction could not be opened — and after the stream in a transaction of its own."""
    store = Store.open("sqlite://" if url == "memory" else f"sqlite:///{tmp_path / 'x.db'}")
    try:
        records = [
            make_prediction(features={"option_logprobs": [-1.0], "answer_index": 0, "k": i})
            for i in range(5)
        ]
        store.insert_predictions(records)
        store.record_feedback([FeedbackItem(r.id, correct=True) for r in records], "acme", False)
        seen = []
        for batch in store.labeled_rows("gemma-3-270m", batch_size=2):
            assert list(batch.features_json) == [None] * len(batch)  # not fetched with the rows
            seen += batch.values("k")
        assert sorted(seen) == list(range(5))
        [*_, last] = store.labeled_rows("gemma-3-270m", batch_size=2)
        assert last.features(0)["k"] in range(5) and last.values("answer_index") == [0]
    finally:
        store.close()
