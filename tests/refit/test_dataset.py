"""The labeled set a refit fits on is the same whichever way the features are stored.

The oracle is the row-by-row packing the refit used while every feature was JSON (kept below as
`_reference`, verbatim in its rules), fed with the features as they were written. The store's
labeled set (packed columns, with the JSON fallback for other shapes, rows converted by the
migration or written by the current code, several batches) must give the same arrays, the same
counts and the same refit result, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from calibrators import Profile
from calibrators.refit import LabeledSet, RefitPolicy, refit_profile
from service.refit.dataset import build_labeled_set
from service.store import LabeledBatch, LabeledRow, PredictionRecord, Store
from service.store.engine import create_store_engine, migrate
from service.store.rows import json_safe
from service.store.schema import feedback
from tests.store.legacy import insert_legacy

MODEL, TASK = "mcq", "default"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


# ------------------------------------------------------------------ the JSON-era packing (oracle)


def _reference(
    rows: list[LabeledRow], preferred: str = "options", forced: str | None = None
) -> tuple[LabeledSet, dict]:
    """The refit's packing before the columns existed: one Python row at a time."""
    opts: dict[str, list[Any]] = {
        "ids": [],
        "vectors": [],
        "labels": [],
        "chosen": [],
        "correct": [],
    }
    seq: dict[str, list[Any]] = {"ids": [], "raw": [], "correct": []}
    unusable = {"options": 0, "sequence": 0}
    counts = {"options": 0, "sequence": 0}
    for row in rows:
        if row.mode not in counts:
            continue
        counts[row.mode] += 1
        if row.mode == "sequence":
            raw = row.raw_confidence
            if raw is None or not math.isfinite(raw):
                unusable["sequence"] += 1
                continue
            seq["ids"].append(row.id)
            seq["raw"].append(float(raw))
            seq["correct"].append(1.0 if row.correct else 0.0)
            continue
        features = row.features or {}
        raw_lp = features.get("option_logprobs") or []
        chosen = features.get("answer_index")
        if not raw_lp or chosen is None or not 0 <= int(chosen) < len(raw_lp):
            unusable["options"] += 1
            continue
        vector = [-math.inf if value is None else float(value) for value in raw_lp]
        if not math.isfinite(vector[int(chosen)]):
            unusable["options"] += 1
            continue
        label = row.true_index
        if label is None or not 0 <= label < len(vector) or not math.isfinite(vector[label]):
            label = -1
        opts["ids"].append(row.id)
        opts["vectors"].append(vector)
        opts["labels"].append(int(label))
        opts["chosen"].append(int(chosen))
        opts["correct"].append(1.0 if row.correct else 0.0)
    other = "sequence" if preferred == "options" else "options"
    mode = other if counts[other] > counts[preferred] else preferred
    mode = forced or mode
    if mode == "options":
        width = max((len(v) for v in opts["vectors"]), default=1)
        matrix = np.full((len(opts["vectors"]), width), -np.inf)
        for i, vector in enumerate(opts["vectors"]):
            matrix[i, : len(vector)] = vector
        data = LabeledSet(
            ids=opts["ids"],
            mode="options",
            correct=np.asarray(opts["correct"], dtype=np.float64),
            option_logprobs=matrix,
            labels=np.asarray(opts["labels"], dtype=np.int64),
            chosen=np.asarray(opts["chosen"], dtype=np.int64),
        )
    else:
        data = LabeledSet(
            ids=seq["ids"],
            mode="sequence",
            correct=np.asarray(seq["correct"], dtype=np.float64),
            raw_confidence=np.asarray(seq["raw"], dtype=np.float64),
        )
    return data, {"mode": mode, "unusable": unusable[mode], "counts": counts}


# ------------------------------------------------------------------ data


def _features(rng: random.Random, i: int) -> dict[str, Any]:
    """Options-mode features of many shapes: mostly the gateway's, some odd ones."""
    k = rng.choice([2, 3, 4, 4, 4, 5])
    logprobs: list[Any] = sorted((rng.uniform(-8, 0) for _ in range(k)), reverse=True)
    rng.shuffle(logprobs)
    if rng.random() < 0.1:
        logprobs[rng.randrange(k)] = float("-inf")  # stored as null
    chosen: Any = max(range(k), key=lambda j: logprobs[j])
    odd = rng.random()
    if odd < 0.03:
        chosen = None  # the answer named no option
    elif odd < 0.05:
        chosen = rng.randrange(k)  # may point at a null log-prob: unusable
    elif odd < 0.06:
        chosen = str(chosen)  # a string index (JSON-era rows could hold one)
    elif odd < 0.07:
        logprobs = [round(v) for v in logprobs if math.isfinite(v)] or [0]  # ints: JSON path
        chosen = 0
    elif odd < 0.08:
        logprobs = []
    elif odd < 0.09:
        chosen = k + 2  # out of range
    elif odd < 0.1:
        logprobs = [*logprobs, -9.0, -9.5, -9.9]  # wider than any usable row, but unusable:
        chosen = -1  # it must not widen the matrix
    features: dict[str, Any] = {"options": list("ABCDE"[:k]), "option_logprobs": logprobs}
    if chosen is not None or rng.random() < 0.5:
        features["answer_index"] = chosen
    features["first_token_prob"] = rng.random()  # another branch's key: never in the way
    return features


def _records(
    n: int, seed: int
) -> tuple[list[PredictionRecord], dict[str, tuple[int | None, bool]]]:
    rng = random.Random(seed)
    records, labels = [], {}
    for i in range(n):
        sequence = rng.random() < 0.1
        mode = "sequence" if sequence else ("weird" if rng.random() < 0.01 else "options")
        raw = None if rng.random() < 0.05 else rng.random()
        features = {"mean_logprob": -0.2, "n_tokens": 3} if sequence else _features(rng, i)
        records.append(
            PredictionRecord(
                id=f"p-{seed}-{i:05d}",
                model=MODEL,
                task=TASK,
                tenant="t",
                mode=mode,
                options=None,
                idk_option=None,
                answer=None,
                raw_confidence=raw,
                confidence=raw,
                features=features,
                created_at=T0,
            )
        )
        truth = None if rng.random() < 0.2 else rng.randrange(6)
        labels[records[-1].id] = (truth, rng.random() < 0.6)
    return records, labels


def _insert_feedback(store: Store, labels: dict[str, tuple[int | None, bool]]) -> None:
    # Distinct label times: the store's order (newest first) is then fully determined.
    rows = [
        {
            "prediction_id": id,
            "correct": correct,
            "label": None,
            "true_index": truth,
            "tenant": "t",
            "key_id": None,
            "created_at": T0 + timedelta(seconds=i),
        }
        for i, (id, (truth, correct)) in enumerate(labels.items())
    ]
    with store.engine.begin() as conn:
        conn.execute(sa.insert(feedback), rows)


def _expected_rows(
    records: list[PredictionRecord], labels: dict[str, tuple[int | None, bool]]
) -> list[LabeledRow]:
    """Rows as the JSON-only store gave them: features through json_safe and JSON, newest first."""
    order = {id: i for i, id in enumerate(labels)}
    rows = [
        LabeledRow(
            id=r.id,
            mode=r.mode,
            raw_confidence=r.raw_confidence,
            features=json.loads(json.dumps(json_safe(r.features))),
            correct=labels[r.id][1],
            true_index=labels[r.id][0],
            labeled_at=T0 + timedelta(seconds=order[r.id]),
        )
        for r in records
    ]
    return sorted(rows, key=lambda row: row.labeled_at, reverse=True)


def _assert_same(got: LabeledSet, want: LabeledSet) -> None:
    assert got.mode == want.mode
    assert got.ids == want.ids
    for name in ("correct", "option_logprobs", "labels", "chosen", "raw_confidence"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert np.array_equal(a, b), name


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calib.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def mixed_store(store_url: str) -> Any:
    """Half the rows written before 0006 (JSON only) and migrated, half by the current code."""
    old, old_labels = _records(700, seed=1)
    new, new_labels = _records(700, seed=2)
    engine = create_store_engine(store_url)
    migrate(engine, "0005")
    with engine.begin() as conn:
        insert_legacy(conn, old)
    engine.dispose()
    store = Store.open(store_url)
    store.insert_predictions(new)
    labels = {**old_labels, **new_labels}
    _insert_feedback(store, labels)
    yield store, _expected_rows(old + new, labels)
    store.close()


@pytest.mark.parametrize("mode", [None, "sequence", "options"])
def test_the_labeled_set_is_the_json_era_one(mixed_store: Any, mode: str | None) -> None:
    store, rows = mixed_store
    want, meta = _reference(rows, forced=mode)
    batches = list(store.labeled_rows(MODEL, TASK, batch_size=97))  # many batches, some mixed
    assert all(isinstance(batch, LabeledBatch) for batch in batches)
    got, info = build_labeled_set(batches, mode=mode)
    _assert_same(got, want)
    assert info.mode == meta["mode"] and info.n_unusable == meta["unusable"]
    assert info.by_mode == meta["counts"] and info.n_rows == len(rows)
    assert info.labels_until == rows[0].labeled_at
    # The unusable and JSON-path rows are really there (the data exercises both paths).
    assert meta["unusable"] > 0 and len(want) > 1000 if meta["mode"] == "options" else True

    # Plain `LabeledRow`s (built by a caller, not the store) pack the same way too.
    from_rows, _ = build_labeled_set([rows[:500], rows[500:]], mode=mode)
    _assert_same(from_rows, want)


def test_the_refit_result_is_the_json_era_one(mixed_store: Any) -> None:
    store, rows = mixed_store
    want, _ = _reference(rows)
    got, _ = build_labeled_set(store.labeled_rows(MODEL, TASK))
    active = Profile.identity(MODEL, TASK)
    now = datetime(2026, 11, 30, tzinfo=UTC)
    a = refit_profile(got, active, RefitPolicy(), now=now)
    b = refit_profile(want, active, RefitPolicy(), now=now)
    assert a.candidate is not None
    assert (a.activate, a.reason, a.metrics) == (b.activate, b.reason, b.metrics)
    assert a.candidate.to_dict() == b.candidate.to_dict()


def test_rows_iterate_with_their_features(mixed_store: Any) -> None:
    store, rows = mixed_store
    got = [row for batch in store.labeled_rows(MODEL, TASK, batch_size=250) for row in batch]
    assert got == rows
    [first, *_] = store.labeled_rows(MODEL, TASK, batch_size=250)
    assert first[-1] == rows[249] and first[1:3] == rows[1:3]
    assert first.values("first_token_prob") == [
        r.features.get("first_token_prob") for r in rows[:250]
    ]


def test_a_corrupt_packed_column_fails_loudly() -> None:
    """A blob that is not float64s (a faulty writer) stops the refit with an error, as an
    unreadable JSON value always did, instead of fitting on garbage."""
    batch = LabeledBatch(
        ids=["a"],
        modes=["options"],
        raw_confidence=[0.5],
        correct=[True],
        true_index=[0],
        option_logprobs=[b"\x00" * 12],
        answer_index=[0],
        features_json=["{}"],
        labeled_at_raw=[T0],
    )
    with pytest.raises(ValueError, match="12 bytes"):
        build_labeled_set([batch])


def test_stored_vllm_masked_logprobs_are_impossible_options() -> None:
    """Rows recorded before the scorer mapped vLLM's -9999 to -inf: the packer does it, so a
    label naming such an option counts through `correct` only (it cannot drive a fit)."""
    from datetime import UTC, datetime

    from service.refit.dataset import build_labeled_set
    from service.store import LabeledRow

    now = datetime.now(UTC)
    features = {"option_logprobs": [-0.1, -2.0, -9999.0], "answer_index": 0}
    rows = [LabeledRow("a", "options", 0.9, features, False, 2, now)]
    data, _ = build_labeled_set([rows])
    assert data.option_logprobs is not None and data.labels is not None
    assert data.option_logprobs[0, 2] == -np.inf
    assert data.labels.tolist() == [-1]
