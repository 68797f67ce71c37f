"""Plain value objects the store reads and writes (no SQLAlchemy types leak out of the store)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from calibrators import Profile

Role = Literal["client", "admin"]
FeedbackStatus = Literal["created", "unchanged"]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every timestamp the store keeps is UTC)."""
    return datetime.now(UTC)


@dataclass
class PredictionRecord:
    """One calibrated response, written behind the response so feedback can join it later."""

    id: str
    model: str
    task: str
    tenant: str
    mode: str
    options: list[str] | None
    idk_option: str | None
    answer: str | None
    raw_confidence: float | None
    confidence: float | None
    features: dict[str, Any] = field(default_factory=dict)
    profile_version: int = 0
    prompt_hash: str | None = None
    abstained: bool = False
    abstain_reason: str | None = None
    request_content: Any | None = None
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class FeedbackItem:
    """One outcome posted by a client: exactly one of `correct` and `label` is set."""

    id: str
    correct: bool | None = None
    label: str | None = None


@dataclass(frozen=True)
class FeedbackResult:
    """What the store did with one `FeedbackItem`."""

    id: str
    correct: bool
    label: str | None
    true_index: int | None
    status: FeedbackStatus
    model: str | None = None  # the prediction's model (for the feedback metrics)


@dataclass(frozen=True)
class FeedbackRecord:
    """Feedback as stored for one prediction (`GET /v1/feedback/{id}`)."""

    id: str
    correct: bool
    label: str | None
    true_index: int | None
    tenant: str
    prediction_tenant: str
    key_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class KeyRecord:
    """An API key as stored: never the plaintext, only its hash and a short display prefix."""

    id: str
    name: str
    role: Role
    tenant: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class ProfileVersion:
    """One entry of a (model, task)'s profile history."""

    model: str
    task: str
    version: int
    active: bool
    reason: str
    metrics: dict[str, Any] | None
    created_at: datetime
    activated_at: datetime | None
    profile: Profile


@dataclass(frozen=True)
class LabeledPrediction:
    """A prediction joined with its feedback: one training/evaluation item for the refit."""

    prediction: PredictionRecord
    correct: bool
    label: str | None
    true_index: int | None
    labeled_at: datetime


@dataclass(frozen=True)
class LabeledRow:
    """The columns of one labeled prediction that a refit needs (lean: 1M of them fit in RAM
    only as arrays, so `Store.labeled_rows` streams these and the caller packs them)."""

    id: str
    mode: str
    raw_confidence: float | None
    features: dict[str, Any]
    correct: bool
    true_index: int | None
    labeled_at: datetime


@dataclass
class ProfileEvent:
    """One entry of the profile audit log: a refit attempt, a manual edit or a rollback.

    `status` for refits: running, activated, rejected, insufficient_labels, no_new_labels,
    failed; manual edits and rollbacks are `activated`. `labels_until` is the newest label a
    refit used (the scheduler counts new labels after it).
    """

    id: str
    model: str
    task: str
    kind: str  # refit | manual | rollback
    status: str
    started_at: datetime
    trigger: str | None = None
    reason: str | None = None
    version: int | None = None
    n_labels: int | None = None
    metrics: dict[str, Any] | None = None
    holder: str | None = None
    labels_until: datetime | None = None
    finished_at: datetime | None = None


#: Refit statuses counted in `refit_tallies` (and so in the refit counters): attempts that ran to
#: an end. ``no_new_labels`` (the scheduler's re-check) and ``busy`` are not attempts.
TALLIED_REFIT_STATUSES = ("activated", "rejected", "insufficient_labels", "failed")


@dataclass(frozen=True)
class RefitTally:
    """Refit attempts of (model, task) that ended with `status` and whose duration fell in the
    bucket with upper bound `le` (``"+Inf"`` for the last); running totals, never reset."""

    model: str
    task: str
    status: str
    le: str
    count: int
    duration_sum: float
    last_finished_at: datetime
