"""The gateway's durable store: predictions, feedback, profile versions, events, API keys,
leases and prompt-optimization jobs — the only package that runs SQL.

`Store` is a thin facade over one repository per aggregate sharing one `Database` (transaction
helper and error translation). SQLAlchemy 2 + Alembic; SQLite (WAL) by default, PostgreSQL
(psycopg 3) for several replicas. See docs/store.md and docs/architecture.md.
"""

from service.store.errors import (
    DuplicateKeyName,
    FeedbackConflict,
    FeedbackError,
    FeedbackForbidden,
    InvalidFeedback,
    KeyNotFound,
    PredictionNotFound,
    ProfileNotFound,
    StoreError,
    StoreUnavailable,
)
from service.store.labeled import LabeledBatch
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
from service.store.store import KEY_PREFIX, Store
from service.store.writer import PredictionWriter

__all__ = [
    "KEY_PREFIX",
    "DuplicateKeyName",
    "FeedbackConflict",
    "FeedbackError",
    "FeedbackForbidden",
    "FeedbackItem",
    "FeedbackRecord",
    "FeedbackResult",
    "InvalidFeedback",
    "KeyNotFound",
    "KeyRecord",
    "LabeledBatch",
    "LabeledPrediction",
    "LabeledRow",
    "PredictionNotFound",
    "PredictionRecord",
    "PredictionWriter",
    "ProfileEvent",
    "ProfileNotFound",
    "ProfileVersion",
    "RefitTally",
    "Store",
    "StoreError",
    "StoreUnavailable",
]
