"""Synthetic labeled traffic for refit tests and benchmarks.

Options mode: an overconfident model. Each item has logits ``z``; the engine reports
``log_softmax(z)`` for options A–D and answers the argmax, while the truth is drawn from
``softmax(z / T_true)`` with ``T_true > 1`` (the world is less certain than the model).
"""

from __future__ import annotations

import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import sqlalchemy as sa

from service.store import Store
from service.store import schema as store_schema
from service.store.features import split_features
from service.store.records import utcnow
from tests.upstream_double import JSONReply, chat_response

if TYPE_CHECKING:
    from tests.conftest import Gateway

OPTIONS = ["A", "B", "C", "D"]


def start_refit_gateway(
    upstream_url: str, tmp_path_factory: Any, name: str, **settings: Any
) -> Gateway:
    """A gateway of the refit tests' own (fresh SQLite file; refits only when a test asks, on a
    thread, from 50 labels); `settings` add to or override those."""
    from tests.conftest import start_gateway  # not at import: benchmarks use this module too

    defaults: dict[str, Any] = {
        "refit_enabled": False,
        "refit_executor": "thread",
        "refit_min_labels": 50,
    }
    db = tmp_path_factory.mktemp(name) / "calib.db"
    return start_gateway(upstream_url, db, **(defaults | settings))


def refit_client(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=60.0)


@dataclass
class OptionItem:
    logprobs: list[float]  # per option, log_softmax(z)
    chosen: int  # the model's answer (argmax)
    truth: int  # drawn from softmax(z / T_true)

    @property
    def correct(self) -> bool:
        return self.chosen == self.truth

    def steps(self) -> list[tuple[str, float, list[tuple[str, float]]]]:
        """One generated token (the answer) whose top-K lists every option."""
        top = sorted(
            ((f" {label}", lp) for label, lp in zip(OPTIONS, self.logprobs, strict=True)),
            key=lambda entry: -entry[1],
        )
        return [(f" {OPTIONS[self.chosen]}", self.logprobs[self.chosen], top)]


def option_items(n: int, true_t: float, seed: int, scale: float = 2.5) -> list[OptionItem]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(n, len(OPTIONS)))
    logprobs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p_true = np.exp(z / true_t)
    p_true /= p_true.sum(axis=1, keepdims=True)
    truths = [int(rng.choice(len(OPTIONS), p=row)) for row in p_true]
    return [
        OptionItem(row.tolist(), int(np.argmax(row)), truth)
        for row, truth in zip(logprobs, truths, strict=True)
    ]


#: Response ids per task: the refit splits fit/held-out by a hash of the id, so ids that change
#: per run (the double's default has a clock in it) make a refit's outcome change per run too.
_ID_COUNTERS: dict[str, itertools.count[int]] = {}


def queue_reply(items: list[OptionItem], task: str = "default"):  # type: ignore[no-untyped-def]
    """An upstream-double reply answering successive requests with successive items, with ids
    that repeat from run to run (`chatcmpl-<task>-<n>`)."""
    pending = list(items)
    counter = _ID_COUNTERS.setdefault(task, itertools.count())

    def reply(path: str, body: dict[str, Any]) -> JSONReply:
        item = pending.pop(0)
        response = chat_response(item.steps(), model=body.get("model", "m"))
        response["id"] = f"chatcmpl-{task}-{next(counter)}"
        return JSONReply(response)

    return reply


def softmax(values: list[float], temperature: float = 1.0) -> np.ndarray:
    v = np.asarray(values, dtype=float) / temperature
    e = np.exp(v - v.max())
    return e / e.sum()


def insert_labeled_options(
    store: Store,
    model: str,
    task: str,
    n: int,
    *,
    true_t: float = 2.0,
    seed: int = 0,
    chunk: int = 50_000,
    with_label: bool = True,
) -> list[str]:
    """Insert `n` options-mode predictions with feedback straight into the store (fast path
    for large windows: no HTTP, no feedback judging). Returns the ids."""
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    now = utcnow()
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        z = rng.normal(0.0, 2.5, size=(size, 4))
        logprobs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        p_true = np.exp(z / true_t)
        p_true /= p_true.sum(axis=1, keepdims=True)
        truths = (rng.uniform(size=(size, 1)) > np.cumsum(p_true, axis=1)).sum(axis=1)
        truths = np.minimum(truths, 3)
        chosen = logprobs.argmax(axis=1)
        probs = np.exp(logprobs)
        batch_ids = [f"bulk-{seed}-{start + i}-{uuid.uuid4().hex[:6]}" for i in range(size)]
        created = now - timedelta(seconds=60)
        predictions = []
        feedback = []
        for i in range(size):
            c = int(chosen[i])
            features, packed, answer_index = split_features(
                {
                    "options": OPTIONS,
                    "option_logprobs": logprobs[i].tolist(),
                    "truncated": [False] * 4,
                    "answer": OPTIONS[c],
                    "answer_index": c,
                    "position": 0,
                }
            )
            predictions.append(
                {
                    "id": batch_ids[i],
                    "model": model,
                    "task": task,
                    "tenant": "default",
                    "mode": "options",
                    "options": OPTIONS,
                    "idk_option": None,
                    "answer": OPTIONS[c],
                    "raw_confidence": float(probs[i, c]),
                    "confidence": float(probs[i, c]),
                    "features": features,  # as the store writes them (hot keys in columns)
                    "option_logprobs": packed,
                    "answer_index": answer_index,
                    "profile_version": 0,
                    "prompt_hash": None,
                    "abstained": False,
                    "abstain_reason": None,
                    "request_content": None,
                    "created_at": created,
                }
            )
            truth = int(truths[i])
            feedback.append(
                {
                    "prediction_id": batch_ids[i],
                    "correct": truth == c,
                    "label": OPTIONS[truth] if with_label else None,
                    "true_index": truth if with_label else (c if truth == c else None),
                    "tenant": "default",
                    "key_id": None,
                    "created_at": now,
                }
            )
        with store.engine.begin() as conn:
            if store.dialect == "sqlite":
                _sqlite_executemany(conn, predictions, feedback)
            else:
                conn.execute(sa.insert(store_schema.predictions), predictions)
                conn.execute(sa.insert(store_schema.feedback), feedback)
        ids.extend(batch_ids)
    return ids


def _sqlite_executemany(conn: Any, predictions: list[dict], feedback: list[dict]) -> None:
    """The same rows through the driver directly (JSON and timestamps encoded as SQLAlchemy
    stores them on SQLite): ~10x faster, which matters at a million rows."""
    p_cols = [c.name for c in store_schema.predictions.columns]
    f_cols = [c.name for c in store_schema.feedback.columns]

    def encode(value: Any) -> Any:
        if isinstance(value, dict | list):
            return json.dumps(value, separators=(",", ":"))
        if isinstance(value, datetime):
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
        return value

    for table, cols, rows in (
        ("predictions", p_cols, predictions),
        ("feedback", f_cols, feedback),
    ):
        sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        conn.exec_driver_sql(sql, [tuple(encode(row[c]) for c in cols) for row in rows])
