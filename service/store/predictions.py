"""Predictions and their feedback: one aggregate (a label belongs to exactly one prediction).

Writes come from the write-behind `PredictionWriter` and `POST /v1/feedback`; reads from the
feedback API, the refit (`labeled_rows`) and the calibration-health collector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from service import feedback_rules
from service.store import schema
from service.store.database import Database, retry_on_conflict
from service.store.errors import (
    FeedbackConflict,
    FeedbackForbidden,
    InvalidFeedback,
    PredictionNotFound,
    StoreError,
)
from service.store.features import merge_features, split_features
from service.store.labeled import LabeledBatch
from service.store.records import (
    FeedbackItem,
    FeedbackRecord,
    FeedbackResult,
    LabeledPrediction,
    PredictionRecord,
    utcnow,
)
from service.store.rows import json_safe

_P = schema.predictions
_F = schema.feedback
_K = schema.api_keys


class PredictionRepository:
    """Predictions, their feedback and the labeled views a refit reads."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def insert_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Insert a batch; ids already stored are skipped (retried batches are harmless)."""
        if not records:
            return
        rows = [_prediction_row(record) for record in records]
        try:
            with self._db.tx(write=True) as conn:
                conn.execute(self._db.insert_ignore(_P, ["id"]), rows)
        except (TypeError, ValueError) as error:  # a driver could not encode some value
            raise StoreError(f"cannot store prediction: {error}") from error

    def get_prediction(self, id: str) -> PredictionRecord | None:
        with self._db.tx() as conn:
            row = conn.execute(sa.select(_P).where(_P.c.id == id)).mappings().first()
        return None if row is None else _prediction_from_row(row)

    def count_predictions(self) -> int:
        with self._db.tx() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_P)).scalar_one())

    # ---------------------------------------------------------------- feedback

    def record_feedback(
        self,
        items: Sequence[FeedbackItem],
        tenant: str,
        is_admin: bool,
        *,
        key_id: str | None = None,
    ) -> list[FeedbackResult]:
        """Judge and store a batch of feedback atomically; committed when this returns.

        Raises a `FeedbackError` naming the first offending item (nothing is stored then).
        """

        def attempt() -> list[FeedbackResult]:
            # A retry follows another replica storing feedback for the same id between our
            # read and our insert (PostgreSQL): we now see its row.
            with self._db.tx(write=True) as conn:
                return self._record_feedback(conn, items, tenant, is_admin, key_id)

        return retry_on_conflict(attempt)

    def _record_feedback(
        self,
        conn: sa.Connection,
        items: Sequence[FeedbackItem],
        tenant: str,
        is_admin: bool,
        key_id: str | None,
    ) -> list[FeedbackResult]:
        ids = list(dict.fromkeys(item.id for item in items))
        select_in = self._db.select_in
        predictions = {row["id"]: row for row in select_in(conn, sa.select(_P), _P.c.id, ids)}
        stored: dict[str, feedback_rules.Judgement] = {
            row["prediction_id"]: feedback_rules.Judgement(
                row["correct"], row["label"], row["true_index"]
            )
            for row in select_in(conn, sa.select(_F), _F.c.prediction_id, ids)
        }
        now = utcnow()
        results: list[FeedbackResult] = []
        new_rows: list[dict[str, Any]] = []
        for item in items:
            prediction = predictions.get(item.id)
            if prediction is None:
                raise PredictionNotFound(item.id, f"No prediction with id {item.id!r}.")
            if not is_admin and prediction["tenant"] != tenant:
                raise FeedbackForbidden(
                    item.id, f"Prediction {item.id!r} belongs to another tenant."
                )
            try:
                judgement = feedback_rules.judge(
                    mode=prediction["mode"],
                    options=prediction["options"],
                    idk_option=prediction["idk_option"],
                    answer=prediction["answer"],
                    abstained=prediction["abstained"],
                    correct=item.correct,
                    label=item.label,
                )
            except feedback_rules.LabelError as error:
                raise InvalidFeedback(item.id, f"{item.id!r}: {error}.") from None
            previous = stored.get(item.id)
            if previous is not None:
                if not feedback_rules.same_judgement(prediction["mode"], previous, judgement):
                    raise FeedbackConflict(
                        item.id,
                        f"Prediction {item.id!r} already has different feedback "
                        f"(correct={previous.correct}, label={previous.label!r}).",
                    )
                results.append(_result(item.id, previous, "unchanged", prediction["model"]))
                continue
            stored[item.id] = judgement
            new_rows.append(
                {
                    "prediction_id": item.id,
                    "correct": judgement.correct,
                    "label": judgement.label,
                    "true_index": judgement.true_index,
                    "tenant": tenant,
                    "key_id": key_id,
                    "created_at": now,
                }
            )
            results.append(_result(item.id, judgement, "created", prediction["model"]))
        if new_rows:
            conn.execute(sa.insert(_F), new_rows)
        return results

    def get_feedback(self, id: str) -> FeedbackRecord | None:
        query = (
            sa.select(_F, _P.c.tenant.label("prediction_tenant"))
            .join(_P, _P.c.id == _F.c.prediction_id)
            .where(_F.c.prediction_id == id)
        )
        with self._db.tx() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return FeedbackRecord(
            id=row["prediction_id"],
            correct=row["correct"],
            label=row["label"],
            true_index=row["true_index"],
            tenant=row["tenant"],
            prediction_tenant=row["prediction_tenant"],
            key_id=row["key_id"],
            created_at=row["created_at"],
        )

    # ---------------------------------------------------------------- labeled views

    def labeled_predictions(
        self,
        model: str,
        task: str | None = "default",
        *,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[LabeledPrediction]:
        """Predictions of `model` (and `task`; None: every task) that have feedback, newest
        labels first; `since` keeps labels given at or after that time."""
        query = (
            sa.select(_P, _F.c.correct, _F.c.label, _F.c.true_index, _F.c.created_at.label("at"))
            .join(_F, _F.c.prediction_id == _P.c.id)
            .where(_P.c.model == model, _not_from_revoked_key())
            .order_by(_F.c.created_at.desc(), _P.c.id)
        )
        query = _window(query, task, since, limit)
        with self._db.tx() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            LabeledPrediction(
                prediction=_prediction_from_row(row),
                correct=row["correct"],
                label=row["label"],
                true_index=row["true_index"],
                labeled_at=row["at"],
            )
            for row in rows
        ]

    def labeled_rows(
        self,
        model: str,
        task: str | None = "default",
        *,
        since: datetime | None = None,
        limit: int | None = None,
        batch_size: int = 20_000,
    ) -> Iterator[LabeledBatch]:
        """Like `labeled_predictions`, but only the columns a refit needs, streamed in batches
        (newest labels first): a million labels never exist as a million full records.

        Each batch is a sequence of `LabeledRow`s built on demand, and also the columns as the
        driver returned them (`LabeledBatch`): the refit reads the packed option log-probs and
        answer indexes without decoding any JSON or timestamp per row.
        """
        query = (
            sa.select(
                _P.c.id,
                _P.c.mode,
                _P.c.raw_confidence,
                _F.c.correct,
                _F.c.true_index,
                sa.type_coerce(_P.c.option_logprobs, _RAW),
                _P.c.answer_index,
                # The rest of `features` as text, only for rows whose hot keys are not all in
                # their columns (the refit reads them); others load it per batch when asked.
                sa.case(
                    (
                        sa.or_(_P.c.option_logprobs.is_(None), _P.c.answer_index.is_(None)),
                        sa.cast(_P.c.features, sa.Text),
                    ),
                    else_=sa.null(),
                ),
                sa.type_coerce(_F.c.created_at, _RAW),
            )
            .join(_F, _F.c.prediction_id == _P.c.id)
            .where(_P.c.model == model, _not_from_revoked_key())
            # No id tie-breaker: sorting a million rows by (time, id) doubles the query time
            # on SQLite; ties only matter for which equal-time labels fall at the limit.
            .order_by(_F.c.created_at.desc())
        )
        query = _window(query, task, since, limit)
        with self._db.tx() as conn:
            to_datetime = _datetime_processor(conn.dialect)
            live: list[sa.Connection] = [conn]  # the other-keys JSON is read on this one while
            # the rows stream (one SQLite in-memory connection cannot open a second transaction)

            def load_json(ids: Sequence[str]) -> dict[str, str]:
                if live:
                    return self._features_json(live[0], ids)
                with self._db.tx() as later:
                    return self._features_json(later, ids)

            try:
                for rows in _fetch_batches(conn, query, batch_size):
                    ids, modes, raw, correct, true_index, blobs, index, rest, at = zip(
                        *rows, strict=True
                    )
                    yield LabeledBatch(
                        ids,
                        modes,
                        raw,
                        correct,
                        true_index,
                        blobs,
                        index,
                        rest,
                        at,
                        to_datetime,
                        load_json,
                    )
            finally:
                live.clear()

    def _features_json(self, conn: sa.Connection, ids: Sequence[str]) -> dict[str, str]:
        query = sa.select(_P.c.id, sa.cast(_P.c.features, sa.Text).label("text"))
        rows = self._db.select_in(conn, query, _P.c.id, list(ids))
        return {row["id"]: row["text"] for row in rows}

    def count_labels(
        self, model: str, task: str | None = "default", *, after: datetime | None = None
    ) -> int:
        """Labeled predictions of (model, task) whose label came strictly after `after`."""
        query = (
            sa.select(sa.func.count())
            .select_from(_F.join(_P, _F.c.prediction_id == _P.c.id))
            .where(_P.c.model == model, _not_from_revoked_key())
        )
        if task is not None:
            query = query.where(_P.c.task == task)
        if after is not None:
            query = query.where(_F.c.created_at > after)
        with self._db.tx() as conn:
            return int(conn.execute(query).scalar_one())

    def label_counts(self, *, after: datetime | None = None) -> dict[tuple[str, str], int]:
        """Labels per (model, task) given strictly after `after` (None: all labels)."""
        query = (
            sa.select(_P.c.model, _P.c.task, sa.func.count())
            .select_from(_F.join(_P, _F.c.prediction_id == _P.c.id))
            .where(_not_from_revoked_key())
            .group_by(_P.c.model, _P.c.task)
        )
        if after is not None:
            query = query.where(_F.c.created_at > after)
        with self._db.tx() as conn:
            return {(row[0], row[1]): int(row[2]) for row in conn.execute(query)}

    def recent_confidences(
        self,
        model: str,
        task: str,
        *,
        limit: int = 2000,
        profile_version: int | None = None,
        mode: str | None = None,
    ) -> tuple[list[float], list[float]]:
        """Raw and calibrated confidences of the newest `limit` scored predictions of
        (model, task), optionally only those served by `profile_version` in `mode`."""
        query = (
            sa.select(_P.c.raw_confidence, _P.c.confidence)
            .where(
                _P.c.model == model,
                _P.c.task == task,
                _P.c.raw_confidence.is_not(None),
                _P.c.confidence.is_not(None),
            )
            .order_by(_P.c.created_at.desc())
            .limit(limit)
        )
        if profile_version is not None:
            query = query.where(_P.c.profile_version == profile_version)
        if mode is not None:
            query = query.where(_P.c.mode == mode)
        with self._db.tx() as conn:
            rows = conn.execute(query).all()
        return [float(row[0]) for row in rows], [float(row[1]) for row in rows]


def _window(
    query: sa.Select[Any], task: str | None, since: datetime | None, limit: int | None
) -> sa.Select[Any]:
    """Labels of `task` (None: every task) given at or after `since`, at most `limit`."""
    if task is not None:
        query = query.where(_P.c.task == task)
    if since is not None:
        query = query.where(_F.c.created_at >= since)
    if limit is not None:
        query = query.limit(limit)
    return query


def _not_from_revoked_key() -> Any:
    """Feedback not given with a key that has since been revoked (docs/security.md): revoking a
    leaked or abusive key takes its labels out of every later refit. Labels stay stored (audit);
    feedback without a key id (bootstrap admin, open mode) is kept."""
    revoked = sa.select(_K.c.id).where(_K.c.id == _F.c.key_id, _K.c.revoked_at.is_not(None))
    return ~revoked.exists()


def _result(
    id: str, judgement: feedback_rules.Judgement, status: str, model: str | None = None
) -> FeedbackResult:
    return FeedbackResult(
        id=id,
        correct=judgement.correct,
        label=judgement.label,
        true_index=judgement.true_index,
        status=status,  # type: ignore[arg-type]
        model=model,
    )


_PREDICTION_FIELDS = tuple(f.name for f in fields(PredictionRecord))
_RAW = sa.types.NullType()  # a column read as the driver returns it (no per-row conversion)


def _prediction_row(record: PredictionRecord) -> dict[str, Any]:
    # Shallow: `json_safe` below builds fresh containers anyway (asdict's deep copy cost more
    # than the INSERT itself on the write-behind thread, which holds the GIL).
    row = {name: getattr(record, name) for name in _PREDICTION_FIELDS}
    row["features"], row["option_logprobs"], row["answer_index"] = split_features(row["features"])
    row["options"] = json_safe(row["options"])
    row["request_content"] = json_safe(row["request_content"])
    return row


def _prediction_from_row(row: Any) -> PredictionRecord:
    values = {name: row[name] for name in _PREDICTION_FIELDS}
    values["features"] = merge_features(
        row["features"], row["option_logprobs"], row["answer_index"]
    )
    return PredictionRecord(**values)


def _fetch_batches(
    conn: sa.Connection, query: sa.Select[Any], size: int
) -> Iterator[Sequence[tuple[Any, ...]]]:
    """The rows of `query` in batches of `size`, as plain tuples.

    SQLite: SQLAlchemy binds the parameters and the rows come straight from the DBAPI cursor
    (sqlite3 steps the statement as rows are fetched), without a `Row` object per row — at a
    million rows those were a fifth of a refit's time; values are as the driver returns them
    (`correct` as 0/1, timestamps as text), which `LabeledBatch` expects. PostgreSQL: a
    server-side cursor through SQLAlchemy (`yield_per`), so the client never holds the whole
    result (a raw read would miss the rows SQLAlchemy buffers when it opens the cursor).
    """
    if conn.dialect.name == "sqlite":
        result = conn.execute(query)
        try:
            while rows := result.cursor.fetchmany(size):
                yield rows
        finally:
            result.close()
        return
    result = conn.execution_options(yield_per=size).execute(query)
    for partition in result.partitions():
        yield cast("Sequence[tuple[Any, ...]]", partition)  # a Row unpacks as a tuple


def _datetime_processor(dialect: sa.Dialect) -> Callable[[Any], datetime]:
    """What SQLAlchemy does to a `feedback.created_at` value the driver returned."""
    column_type = _F.c.created_at.type
    process = column_type.dialect_impl(dialect).result_processor(dialect, None)
    if process is None:  # pragma: no cover - UTCDateTime always post-processes
        return cast("Callable[[Any], datetime]", lambda value: value)
    return cast("Callable[[Any], datetime]", process)
