"""`Store`: the gateway's durable state behind one small synchronous API.

Every method runs one short transaction and is safe to call from several threads at once
(async code calls it through `asyncio.to_thread`). Database failures surface as
`StoreUnavailable` (retry later) or `StoreError`; feedback problems as `FeedbackError`
subclasses that carry the offending id and the HTTP status to report.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from service import feedback_rules
from service.store import schema
from service.store.engine import WRITE, create_store_engine, migrate
from service.store.errors import (
    DuplicateKeyName,
    FeedbackConflict,
    FeedbackForbidden,
    InvalidFeedback,
    KeyNotFound,
    PredictionNotFound,
    ProfileNotFound,
    StoreError,
    StoreUnavailable,
)
from service.store.records import (
    TALLIED_REFIT_STATUSES,
    FeedbackItem,
    FeedbackRecord,
    FeedbackResult,
    KeyRecord,
    LabeledPrediction,
    LabeledRow,
    PredictionRecord,
    ProfileEvent,
    ProfileVersion,
    RefitTally,
    utcnow,
)

logger = logging.getLogger(__name__)

KEY_PREFIX = "sk-calib-"
ROLES = ("client", "admin")
DEFAULT_TENANT = "default"
_IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's and PostgreSQL's parameter limits
_P = schema.predictions
_F = schema.feedback
_K = schema.api_keys
_PR = schema.profiles
_L = schema.leases
_E = schema.profile_events
_RT = schema.refit_tallies
#: Upper bounds of the refit-duration buckets the tallies count in (`calib_refit_duration_seconds`).
REFIT_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


def hash_key(plaintext: str) -> str:
    """The stored form of an API key: SHA-256 of a 256-bit random secret needs no salt."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


if TYPE_CHECKING:
    from calibrators import Profile


def _profile_cls() -> type[Profile]:
    from calibrators import Profile  # imported late: the store works without profiles loaded

    return Profile


class Store:
    """Predictions, feedback, profile versions and API keys in one SQL database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True) -> Store:
        """Connect to `url` and migrate the schema to head (idempotent, safe to race)."""
        engine = create_store_engine(url)
        store = cls(engine)
        if migrate_schema:
            with store._errors():
                migrate(engine)
        return store

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers a trivial query."""
        with self._tx() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self._engine.dispose()

    # ---------------------------------------------------------------- predictions

    def insert_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Insert a batch; ids already stored are skipped (retried batches are harmless)."""
        if not records:
            return
        rows = [_prediction_row(record) for record in records]
        try:
            with self._tx(write=True) as conn:
                conn.execute(self._insert_ignore(_P, ["id"]), rows)
        except (TypeError, ValueError) as error:  # a driver could not encode some value
            raise StoreError(f"cannot store prediction: {error}") from error

    def get_prediction(self, id: str) -> PredictionRecord | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(_P).where(_P.c.id == id)).mappings().first()
        return None if row is None else _prediction_from_row(row)

    def count_predictions(self) -> int:
        with self._tx() as conn:
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
        for attempt in range(3):
            try:
                with self._tx(write=True) as conn:
                    return self._record_feedback(conn, items, tenant, is_admin, key_id)
            except StoreError as error:
                # Another replica stored feedback for the same id between our read and our
                # insert (PostgreSQL): run again, we will now see its row.
                if not isinstance(error.__cause__, sa_exc.IntegrityError) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _record_feedback(
        self,
        conn: sa.Connection,
        items: Sequence[FeedbackItem],
        tenant: str,
        is_admin: bool,
        key_id: str | None,
    ) -> list[FeedbackResult]:
        ids = list(dict.fromkeys(item.id for item in items))
        predictions = {row["id"]: row for row in self._select_in(conn, sa.select(_P), _P.c.id, ids)}
        stored: dict[str, feedback_rules.Judgement] = {
            row["prediction_id"]: feedback_rules.Judgement(
                row["correct"], row["label"], row["true_index"]
            )
            for row in self._select_in(conn, sa.select(_F), _F.c.prediction_id, ids)
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
        with self._tx() as conn:
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
        if task is not None:
            query = query.where(_P.c.task == task)
        if since is not None:
            query = query.where(_F.c.created_at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
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

    # ---------------------------------------------------------------- API keys

    def create_key(self, name: str, role: str, tenant: str | None = None) -> tuple[str, KeyRecord]:
        """Create a key; returns the plaintext (shown once, never stored) and its record."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        if not name or len(name) > 128:
            raise ValueError("key name must be 1-128 characters")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id="key_" + secrets.token_hex(8),
            name=name,
            role=role,  # type: ignore[arg-type]
            tenant=tenant or DEFAULT_TENANT,
            prefix=plaintext[: len(KEY_PREFIX) + 4],
            created_at=utcnow(),
        )
        with self._tx(write=True) as conn:
            taken = conn.execute(
                sa.select(_K.c.id).where(_K.c.name == name, _K.c.revoked_at.is_(None))
            ).first()
            if taken is not None:
                raise DuplicateKeyName(f"an active key named {name!r} already exists")
            conn.execute(sa.insert(_K).values(**asdict(record), key_hash=hash_key(plaintext)))
        return plaintext, record

    def find_key(self, plaintext: str) -> KeyRecord | None:
        """The active key with this plaintext, or None (unknown or revoked)."""
        query = sa.select(_K).where(_K.c.key_hash == hash_key(plaintext))
        with self._tx() as conn:
            row = conn.execute(query).mappings().first()
        if row is None or row["revoked_at"] is not None:
            return None
        return _key_from_row(row)

    def count_keys(self) -> int:
        """Number of active (not revoked) keys."""
        query = sa.select(sa.func.count()).select_from(_K).where(_K.c.revoked_at.is_(None))
        with self._tx() as conn:
            return int(conn.execute(query).scalar_one())

    def list_keys(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        query = sa.select(_K).order_by(_K.c.created_at, _K.c.id)
        if not include_revoked:
            query = query.where(_K.c.revoked_at.is_(None))
        with self._tx() as conn:
            return [_key_from_row(row) for row in conn.execute(query).mappings()]

    def revoke_key(self, name_or_id: str) -> list[KeyRecord]:
        """Revoke the active key(s) with this name or id; raises `KeyNotFound` if none."""
        now = utcnow()
        match = sa.or_(_K.c.name == name_or_id, _K.c.id == name_or_id)
        with self._tx(write=True) as conn:
            rows = (
                conn.execute(sa.select(_K).where(match, _K.c.revoked_at.is_(None))).mappings().all()
            )
            if not rows:
                raise KeyNotFound(f"no active key named {name_or_id!r}")
            ids = [row["id"] for row in rows]
            conn.execute(sa.update(_K).where(_K.c.id.in_(ids)).values(revoked_at=now))
        return [_key_from_row({**row, "revoked_at": now}) for row in rows]

    # ---------------------------------------------------------------- profiles

    def active_profile(self, model: str, task: str = "default") -> Profile | None:
        """The active `calibrators.Profile` of (model, task), or None."""
        query = (
            sa.select(_PR.c.data)
            .where(_PR.c.model == model, _PR.c.task == task, _PR.c.active.is_(True))
            .order_by(_PR.c.version.desc())
            .limit(1)
        )
        with self._tx() as conn:
            data = conn.execute(query).scalar_one_or_none()
        return None if data is None else _profile_cls().from_dict(data)

    def save_profile(
        self,
        profile: Profile,
        *,
        activate: bool,
        reason: str,
        metrics: dict[str, Any] | None = None,
    ) -> Profile:
        """Store `profile` as the next version of its (model, task) and return it so numbered."""
        profile_cls = _profile_cls()
        base = profile.to_dict()
        model, task = base["model"], base["task"]
        for attempt in range(3):
            try:
                with self._tx(write=True) as conn:
                    current = conn.execute(
                        sa.select(sa.func.max(_PR.c.version)).where(
                            _PR.c.model == model, _PR.c.task == task
                        )
                    ).scalar_one()
                    data = {**base, "version": (current or 0) + 1}
                    now = utcnow()
                    if activate:
                        conn.execute(
                            sa.update(_PR)
                            .where(_PR.c.model == model, _PR.c.task == task)
                            .values(active=False)
                        )
                    conn.execute(
                        sa.insert(_PR).values(
                            model=model,
                            task=task,
                            version=data["version"],
                            active=activate,
                            reason=reason,
                            metrics=metrics if metrics is not None else data.get("metrics"),
                            data=data,
                            created_at=now,
                            activated_at=now if activate else None,
                        )
                    )
                return profile_cls.from_dict(data)
            except StoreError as error:
                # A concurrent save took the same version number: take the next one.
                if not isinstance(error.__cause__, sa_exc.IntegrityError) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def profile_history(self, model: str, task: str = "default") -> list[ProfileVersion]:
        """All stored versions of (model, task), newest first."""
        profile_cls = _profile_cls()  # once per call, not per row
        query = (
            sa.select(_PR)
            .where(_PR.c.model == model, _PR.c.task == task)
            .order_by(_PR.c.version.desc())
        )
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        return [_version_from_row(row, profile_cls) for row in rows]

    def profile_models(self) -> list[tuple[str, str]]:
        """Every (model, task) with at least one stored profile version."""
        query = sa.select(_PR.c.model, _PR.c.task).distinct().order_by(_PR.c.model, _PR.c.task)
        with self._tx() as conn:
            return [(row.model, row.task) for row in conn.execute(query)]

    def activate_profile_version(self, model: str, task: str, version: int) -> Profile:
        """Make `version` the active profile of (model, task) (e.g. a rollback)."""
        where = (_PR.c.model == model, _PR.c.task == task)
        with self._tx(write=True) as conn:
            data = conn.execute(
                sa.select(_PR.c.data).where(*where, _PR.c.version == version)
            ).scalar_one_or_none()
            if data is None:
                raise ProfileNotFound(f"no profile version {version} for {model!r}/{task!r}")
            conn.execute(sa.update(_PR).where(*where).values(active=False))
            conn.execute(
                sa.update(_PR)
                .where(*where, _PR.c.version == version)
                .values(active=True, activated_at=utcnow())
            )
        return _profile_cls().from_dict(data)

    # ---------------------------------------------------------------- leases

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take (or extend) the lease `name` for `ttl_s` seconds; False if someone else holds
        an unexpired one. Works across replicas; a crashed holder's lease simply expires."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_s)
        try:
            with self._tx(write=True) as conn:
                taken = conn.execute(
                    sa.update(_L)
                    .where(_L.c.name == name, sa.or_(_L.c.holder == holder, _L.c.expires_at <= now))
                    .values(holder=holder, acquired_at=now, expires_at=expires)
                ).rowcount
                if taken:
                    return True
                if conn.execute(sa.select(_L.c.name).where(_L.c.name == name)).first():
                    return False
                conn.execute(
                    sa.insert(_L).values(
                        name=name, holder=holder, acquired_at=now, expires_at=expires
                    )
                )
                return True
        except StoreError as error:
            if isinstance(error.__cause__, sa_exc.IntegrityError):
                return False  # another holder inserted it first
            raise

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (only if `holder` still holds it)."""
        with self._tx(write=True) as conn:
            conn.execute(sa.delete(_L).where(_L.c.name == name, _L.c.holder == holder))

    # ---------------------------------------------------------------- refit input, events

    def labeled_rows(
        self,
        model: str,
        task: str | None = "default",
        *,
        since: datetime | None = None,
        limit: int | None = None,
        batch_size: int = 20_000,
    ) -> Iterator[list[LabeledRow]]:
        """Like `labeled_predictions`, but only the columns a refit needs, streamed in batches
        (newest labels first): a million labels never exist as a million full records."""
        query = (
            sa.select(
                _P.c.id,
                _P.c.mode,
                _P.c.raw_confidence,
                _P.c.features,
                _F.c.correct,
                _F.c.true_index,
                _F.c.created_at,
            )
            .join(_F, _F.c.prediction_id == _P.c.id)
            .where(_P.c.model == model, _not_from_revoked_key())
            # No id tie-breaker: sorting a million rows by (time, id) doubles the query time
            # on SQLite; ties only matter for which equal-time labels fall at the limit.
            .order_by(_F.c.created_at.desc())
        )
        if task is not None:
            query = query.where(_P.c.task == task)
        if since is not None:
            query = query.where(_F.c.created_at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
            result = conn.execution_options(yield_per=batch_size).execute(query)
            for partition in result.partitions():
                yield [LabeledRow(*row) for row in partition]

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
        with self._tx() as conn:
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
        with self._tx() as conn:
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
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [float(row[0]) for row in rows], [float(row[1]) for row in rows]

    def active_version(self, model: str, task: str = "default") -> ProfileVersion | None:
        """The active version of (model, task) with its reason and metrics, or None."""
        query = (
            sa.select(_PR)
            .where(_PR.c.model == model, _PR.c.task == task, _PR.c.active.is_(True))
            .order_by(_PR.c.version.desc())
            .limit(1)
        )
        with self._tx() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _version_from_row(row)

    def profile_version(self, model: str, task: str, version: int) -> ProfileVersion | None:
        """One stored version of (model, task), or None."""
        query = sa.select(_PR).where(
            _PR.c.model == model, _PR.c.task == task, _PR.c.version == version
        )
        with self._tx() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _version_from_row(row)

    def model_tasks(self, model: str) -> list[str]:
        """Tasks of `model` with at least one stored profile version."""
        query = sa.select(_PR.c.task).where(_PR.c.model == model).distinct().order_by(_PR.c.task)
        with self._tx() as conn:
            return [row[0] for row in conn.execute(query)]

    def add_event(self, event: ProfileEvent) -> None:
        """Append an entry to the profile audit log."""
        with self._tx(write=True) as conn:
            conn.execute(sa.insert(_E).values(**_event_row(event)))

    def update_event(self, event: ProfileEvent) -> None:
        """Store the current state of an event added earlier (e.g. a finished refit)."""
        row = _event_row(event)
        with self._tx(write=True) as conn:
            conn.execute(sa.update(_E).where(_E.c.id == event.id).values(**row))

    def get_event(self, id: str) -> ProfileEvent | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(_E).where(_E.c.id == id)).mappings().first()
        return None if row is None else ProfileEvent(**row)

    def profile_events(
        self, model: str, task: str = "default", *, limit: int = 50
    ) -> list[ProfileEvent]:
        """The newest `limit` audit-log entries of (model, task), newest first."""
        query = (
            sa.select(_E)
            .where(_E.c.model == model, _E.c.task == task)
            .order_by(_E.c.started_at.desc(), _E.c.id)
            .limit(limit)
        )
        with self._tx() as conn:
            return [ProfileEvent(**row) for row in conn.execute(query).mappings()]

    def last_refit(
        self, model: str, task: str = "default", *, statuses: Sequence[str] | None = None
    ) -> ProfileEvent | None:
        """The newest finished refit of (model, task), optionally with one of `statuses`."""
        query = (
            sa.select(_E)
            .where(
                _E.c.model == model,
                _E.c.task == task,
                _E.c.kind == "refit",
                _E.c.finished_at.is_not(None),
            )
            .order_by(_E.c.finished_at.desc())
            .limit(1)
        )
        if statuses is not None:
            query = query.where(_E.c.status.in_(list(statuses)))
        with self._tx() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else ProfileEvent(**row)

    def finish_refit(
        self, event: ProfileEvent, duration_s: float, *, unless_finished: bool = False
    ) -> bool:
        """Store a refit's final state and count it in the refit tallies, in one transaction.

        The event is inserted if it was never added (e.g. the worker died before recording it).
        With `unless_finished`, an event already stored with a final status is left alone and
        nothing is counted (returns False): the attempt was finished and counted by whoever ran
        it. Statuses outside `TALLIED_REFIT_STATUSES` are stored but not counted.
        """
        row = _event_row(event)
        with self._tx(write=True) as conn:
            stored = conn.execute(sa.select(_E.c.status).where(_E.c.id == event.id)).first()
            if stored is None:
                conn.execute(sa.insert(_E).values(**row))
            elif unless_finished and stored[0] != "running":
                return False
            else:
                conn.execute(sa.update(_E).where(_E.c.id == event.id).values(**row))
            if event.status in TALLIED_REFIT_STATUSES:
                self._tally(conn, event, duration_s)
        return True

    def _tally(self, conn: sa.Connection, event: ProfileEvent, duration_s: float) -> None:
        seconds = duration_s if math.isfinite(duration_s) and duration_s > 0 else 0.0
        bound = next((b for b in REFIT_DURATION_BUCKETS if seconds <= b), math.inf)
        values = {
            "model": event.model,
            "task": event.task,
            "status": event.status,
            "le": "+Inf" if bound == math.inf else repr(float(bound)),
            "count": 1,
            "duration_sum": seconds,
            "last_finished_at": event.finished_at or utcnow(),
        }
        insert = (postgresql if self.dialect == "postgresql" else sqlite).insert(_RT).values(values)
        newer = insert.excluded.last_finished_at > _RT.c.last_finished_at
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["model", "task", "status", "le"],
                set_={
                    "count": _RT.c.count + 1,
                    "duration_sum": _RT.c.duration_sum + insert.excluded.duration_sum,
                    "last_finished_at": sa.case(
                        (newer, insert.excluded.last_finished_at), else_=_RT.c.last_finished_at
                    ),
                },
            )
        )

    def refit_tallies(self) -> list[RefitTally]:
        """Every refit tally row (small: models x tasks x statuses x duration buckets)."""
        with self._tx() as conn:
            return [RefitTally(**row) for row in conn.execute(sa.select(_RT)).mappings()]

    # ---------------------------------------------------------------- internals

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
            raise StoreUnavailable(f"database unavailable: {_short(error)}") from error
        except (sa_exc.DisconnectionError, sa_exc.TimeoutError) as error:
            raise StoreUnavailable(f"database unavailable: {_short(error)}") from error
        except sa_exc.DBAPIError as error:
            if error.connection_invalidated:
                raise StoreUnavailable(f"database unavailable: {_short(error)}") from error
            raise StoreError(f"database error: {_short(error)}") from error
        except sa_exc.SQLAlchemyError as error:
            raise StoreError(f"database error: {_short(error)}") from error

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[sa.Connection]:
        with self._errors(), self._engine.connect() as conn:
            if write:
                conn.execution_options(**WRITE)
            with conn.begin():
                yield conn

    def _insert_ignore(self, table: sa.Table, keys: list[str]) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
        if self.dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
        return sa.insert(table)

    @staticmethod
    def _select_in(
        conn: sa.Connection, query: sa.Select[Any], column: sa.Column[Any], values: list[Any]
    ) -> Iterable[Any]:
        for start in range(0, len(values), _IN_CHUNK):
            chunk = values[start : start + _IN_CHUNK]
            yield from conn.execute(query.where(column.in_(chunk))).mappings()


def _not_from_revoked_key() -> Any:
    """Feedback not given with a key that has since been revoked (docs/security.md): revoking a
    leaked or abusive key takes its labels out of every later refit. Labels stay stored (audit);
    feedback without a key id (bootstrap admin, open mode) is kept."""
    revoked = sa.select(_K.c.id).where(_K.c.id == _F.c.key_id, _K.c.revoked_at.is_not(None))
    return ~revoked.exists()


def _short(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.splitlines()[0][:300] if text else type(error).__name__


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


def _prediction_row(record: PredictionRecord) -> dict[str, Any]:
    # Shallow: `_json_safe` below builds fresh containers anyway (asdict's deep copy cost more
    # than the INSERT itself on the write-behind thread, which holds the GIL).
    row = {name: getattr(record, name) for name in _PREDICTION_FIELDS}
    row["features"] = _json_safe(row["features"] or {})
    row["options"] = _json_safe(row["options"])
    row["request_content"] = _json_safe(row["request_content"])
    return row


def _json_safe(value: Any) -> Any:
    """JSON that every backend accepts: NaN/±inf become null (PostgreSQL's JSON has neither,
    and a -inf logprob is common), numpy scalars become Python numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item):
        with contextlib.suppress(TypeError, ValueError):
            return _json_safe(item())
    tolist = getattr(value, "tolist", None)  # numpy array
    if callable(tolist):
        return _json_safe(tolist())
    return value


def _prediction_from_row(row: Any) -> PredictionRecord:
    return PredictionRecord(**{column.name: row[column.name] for column in _P.columns})


def _key_from_row(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        tenant=row["tenant"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def _version_from_row(row: Any, profile_cls: Any = None) -> ProfileVersion:
    return ProfileVersion(
        model=row["model"],
        task=row["task"],
        version=row["version"],
        active=row["active"],
        reason=row["reason"],
        metrics=row["metrics"],
        created_at=row["created_at"],
        activated_at=row["activated_at"],
        profile=(profile_cls or _profile_cls()).from_dict(row["data"]),
    )


def _event_row(event: ProfileEvent) -> dict[str, Any]:
    row = asdict(event)
    row["metrics"] = _json_safe(row["metrics"])
    return row
