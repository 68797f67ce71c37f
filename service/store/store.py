"""`Store`: the gateway's durable state behind one small synchronous API.

A thin facade over one repository per aggregate, all sharing one `Database` (one transaction
helper, one error translation):

* `predictions` — predictions and their feedback (`service.store.predictions`)
* `profiles` — profile versions (`service.store.profiles`)
* `events` — the profile audit log and refit tallies (`service.store.events`)
* `keys` — API keys (`service.store.keys`)
* `leases` — cross-replica job leases (`service.store.leases`)
* `prompt_jobs` — prompt-optimization jobs (`service.store.prompt_opt_jobs`)

The methods below only forward, so call sites keep writing `store.save_profile(...)`. Every
method runs one short transaction and is safe to call from several threads at once (async code
calls it through `asyncio.to_thread`). Database failures surface as `StoreUnavailable` (retry
later) or `StoreError`; feedback problems as `FeedbackError` subclasses that carry the offending
id and the HTTP status to report.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.store.database import Database
from service.store.engine import create_store_engine, migrate
from service.store.events import REFIT_DURATION_BUCKETS, EventRepository
from service.store.keys import DEFAULT_TENANT, KEY_PREFIX, ROLES, KeyRepository, hash_key
from service.store.leases import LeaseRepository
from service.store.predictions import PredictionRepository
from service.store.profiles import ProfileRepository
from service.store.prompt_opt_jobs import PromptOptJobRepository
from service.store.records import (
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
)

if TYPE_CHECKING:
    from calibrators import Profile

__all__ = [
    "DEFAULT_TENANT",
    "KEY_PREFIX",
    "REFIT_DURATION_BUCKETS",
    "ROLES",
    "Store",
    "hash_key",
]


class Store:
    """Predictions, feedback, profile versions, events, API keys, leases and prompt-optimization
    jobs in one SQL database."""

    def __init__(self, engine: Engine) -> None:
        self.db = Database(engine)
        self.predictions = PredictionRepository(self.db)
        self.profiles = ProfileRepository(self.db)
        self.events = EventRepository(self.db)
        self.keys = KeyRepository(self.db)
        self.leases = LeaseRepository(self.db)
        self.prompt_jobs = PromptOptJobRepository(self.db)

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True) -> Store:
        """Connect to `url` and migrate the schema to head (idempotent, safe to race)."""
        store = cls(create_store_engine(url))
        if migrate_schema:
            with store.db.errors():
                migrate(store.engine)
        return store

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers a trivial query."""
        with self.db.tx() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self.db.engine.dispose()

    # ---------------------------------------------------------------- predictions, feedback

    def insert_predictions(self, records: Sequence[PredictionRecord]) -> None:
        self.predictions.insert_predictions(records)

    def get_prediction(self, id: str) -> PredictionRecord | None:
        return self.predictions.get_prediction(id)

    def count_predictions(self) -> int:
        return self.predictions.count_predictions()

    def record_feedback(
        self,
        items: Sequence[FeedbackItem],
        tenant: str,
        is_admin: bool,
        *,
        key_id: str | None = None,
    ) -> list[FeedbackResult]:
        return self.predictions.record_feedback(items, tenant, is_admin, key_id=key_id)

    def get_feedback(self, id: str) -> FeedbackRecord | None:
        return self.predictions.get_feedback(id)

    def labeled_predictions(
        self,
        model: str,
        task: str | None = "default",
        *,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[LabeledPrediction]:
        return self.predictions.labeled_predictions(model, task, since=since, limit=limit)

    def labeled_rows(
        self,
        model: str,
        task: str | None = "default",
        *,
        since: datetime | None = None,
        limit: int | None = None,
        batch_size: int = 20_000,
    ) -> Iterator[list[LabeledRow]]:
        return self.predictions.labeled_rows(
            model, task, since=since, limit=limit, batch_size=batch_size
        )

    def count_labels(
        self, model: str, task: str | None = "default", *, after: datetime | None = None
    ) -> int:
        return self.predictions.count_labels(model, task, after=after)

    def label_counts(self, *, after: datetime | None = None) -> dict[tuple[str, str], int]:
        return self.predictions.label_counts(after=after)

    def recent_confidences(
        self,
        model: str,
        task: str,
        *,
        limit: int = 2000,
        profile_version: int | None = None,
        mode: str | None = None,
    ) -> tuple[list[float], list[float]]:
        return self.predictions.recent_confidences(
            model, task, limit=limit, profile_version=profile_version, mode=mode
        )

    # ---------------------------------------------------------------- API keys

    def create_key(self, name: str, role: str, tenant: str | None = None) -> tuple[str, KeyRecord]:
        return self.keys.create_key(name, role, tenant)

    def find_key(self, plaintext: str) -> KeyRecord | None:
        return self.keys.find_key(plaintext)

    def count_keys(self) -> int:
        return self.keys.count_keys()

    def list_keys(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        return self.keys.list_keys(include_revoked=include_revoked)

    def revoke_key(self, name_or_id: str) -> list[KeyRecord]:
        return self.keys.revoke_key(name_or_id)

    # ---------------------------------------------------------------- profiles

    def active_profile(self, model: str, task: str = "default") -> Profile | None:
        return self.profiles.active_profile(model, task)

    def save_profile(
        self,
        profile: Profile,
        *,
        activate: bool,
        reason: str,
        metrics: dict[str, Any] | None = None,
    ) -> Profile:
        return self.profiles.save_profile(
            profile, activate=activate, reason=reason, metrics=metrics
        )

    def profile_history(self, model: str, task: str = "default") -> list[ProfileVersion]:
        return self.profiles.profile_history(model, task)

    def profile_models(self) -> list[tuple[str, str]]:
        return self.profiles.profile_models()

    def model_tasks(self, model: str) -> list[str]:
        return self.profiles.model_tasks(model)

    def activate_profile_version(self, model: str, task: str, version: int) -> Profile:
        return self.profiles.activate_profile_version(model, task, version)

    def active_version(self, model: str, task: str = "default") -> ProfileVersion | None:
        return self.profiles.active_version(model, task)

    def profile_version(self, model: str, task: str, version: int) -> ProfileVersion | None:
        return self.profiles.profile_version(model, task, version)

    # ---------------------------------------------------------------- events, refit tallies

    def add_event(self, event: ProfileEvent) -> None:
        self.events.add_event(event)

    def update_event(self, event: ProfileEvent) -> None:
        self.events.update_event(event)

    def get_event(self, id: str) -> ProfileEvent | None:
        return self.events.get_event(id)

    def profile_events(
        self, model: str, task: str = "default", *, limit: int = 50
    ) -> list[ProfileEvent]:
        return self.events.profile_events(model, task, limit=limit)

    def last_refit(
        self, model: str, task: str = "default", *, statuses: Sequence[str] | None = None
    ) -> ProfileEvent | None:
        return self.events.last_refit(model, task, statuses=statuses)

    def finish_refit(
        self, event: ProfileEvent, duration_s: float, *, unless_finished: bool = False
    ) -> bool:
        return self.events.finish_refit(event, duration_s, unless_finished=unless_finished)

    def refit_tallies(self) -> list[RefitTally]:
        return self.events.refit_tallies()

    # ---------------------------------------------------------------- leases

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        return self.leases.acquire_lease(name, holder, ttl_s)

    def release_lease(self, name: str, holder: str) -> None:
        self.leases.release_lease(name, holder)
