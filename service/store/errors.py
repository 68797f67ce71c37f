"""Store exceptions: what callers can tell apart (bad feedback vs. a store that is down)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises."""


class StoreUnavailable(StoreError):
    """The database could not be reached or refused the operation; retrying later may work."""


class FeedbackError(StoreError):
    """A feedback item was rejected; `id` names it and `status` is the HTTP status to report."""

    status: int = 400
    code: str = "invalid_feedback"

    def __init__(self, id: str, message: str) -> None:
        super().__init__(message)
        self.id = id
        self.message = message


class PredictionNotFound(FeedbackError):
    status = 404
    code = "prediction_not_found"


class FeedbackForbidden(FeedbackError):
    status = 403
    code = "other_tenant"


class FeedbackConflict(FeedbackError):
    status = 409
    code = "feedback_conflict"


class InvalidFeedback(FeedbackError):
    status = 422
    code = "invalid_label"


class KeyNotFound(StoreError):
    """No API key with that name or id."""


class DuplicateKeyName(StoreError):
    """An active API key with that name already exists."""


class ProfileNotFound(StoreError):
    """No stored profile version with that (model, task, version)."""
