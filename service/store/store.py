"""`Store`: the gateway's durable state behind one small synchronous API.

A thin facade: `Store` is the union of one repository per aggregate, all sharing one `Database`
(one transaction helper, one error translation), so call sites keep writing
`store.save_profile(...)` while each aggregate's queries live in its own module:

* predictions and their feedback — `service.store.predictions.PredictionRepository`
* profile versions — `service.store.profiles.ProfileRepository`
* the profile audit log and refit tallies — `service.store.events.EventRepository`
* API keys — `service.store.keys.KeyRepository`
* cross-replica job leases — `service.store.leases.LeaseRepository`
* the labels behind the guarantee monitor — `service.store.guarantees.GuaranteeRepository`
* prompt-optimization jobs — `store.prompt_jobs` (`service.store.prompt_opt_jobs`), used only by
  `service.prompt_opt.job`

Every method runs one short transaction and is safe to call from several threads at once (async
code calls it through `asyncio.to_thread`). Database failures surface as `StoreUnavailable`
(retry later) or `StoreError`; feedback problems as `FeedbackError` subclasses that carry the
offending id and the HTTP status to report.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.store.database import Database
from service.store.engine import create_store_engine, migrate
from service.store.events import REFIT_DURATION_BUCKETS, EventRepository
from service.store.guarantees import GuaranteeRepository
from service.store.keys import DEFAULT_TENANT, KEY_PREFIX, ROLES, KeyRepository, hash_key
from service.store.leases import LeaseRepository
from service.store.predictions import PredictionRepository
from service.store.profiles import ProfileRepository
from service.store.prompt_opt_jobs import PromptOptJobRepository

__all__ = [
    "DEFAULT_TENANT",
    "KEY_PREFIX",
    "REFIT_DURATION_BUCKETS",
    "ROLES",
    "Store",
    "hash_key",
]


class Store(
    PredictionRepository,
    ProfileRepository,
    EventRepository,
    KeyRepository,
    LeaseRepository,
    GuaranteeRepository,
):
    """Predictions, feedback, profile versions, events, API keys, leases and prompt-optimization
    jobs in one SQL database."""

    def __init__(self, engine: Engine) -> None:
        self.db = Database(engine)
        self._db = self.db  # what every repository method uses
        self.prompt_jobs = PromptOptJobRepository(self.db)

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
