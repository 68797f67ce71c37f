"""`POST /v1/feedback` and `GET /v1/feedback/{id}`: outcomes that the refit learns from.

A body is one item or a list of items, each `{id, correct: bool}` or `{id, label: str}`. The
store judges labels (see `service.feedback_rules`), and commits the whole batch — or nothing —
before we answer 2xx: an acknowledged label is never lost. Store faults answer 503 with
`Retry-After`, never a false acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from service import metrics
from service.auth import Principal, authenticate
from service.errors import APIError
from service.rate_limit import TokenBuckets
from service.services import per_app
from service.settings import Settings
from service.store import FeedbackError, FeedbackItem, FeedbackResult, Store, StoreError

router = APIRouter(tags=["feedback"])

DEFAULT_MAX_BATCH = 1000
RETRY_AFTER_S = "1"


class FeedbackIn(BaseModel):
    """One feedback item: exactly one of `correct` and `label`."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, description="`calibration.id` of the response.")
    correct: StrictBool | None = Field(None, description="Whether the answer was right.")
    label: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="The true answer; the gateway decides correctness from the stored answer.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> FeedbackIn:
        if (self.correct is None) == (self.label is None):
            raise ValueError("give exactly one of 'correct' and 'label'")
        return self


class FeedbackOut(BaseModel):
    object: str = "feedback"
    id: str
    correct: bool
    label: str | None
    status: str


_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/FeedbackIn"},
                        {"type": "array", "items": {"$ref": "#/components/schemas/FeedbackIn"}},
                    ]
                }
            }
        },
    }
}


def _parse(raw: bytes, max_batch: int) -> tuple[list[FeedbackItem], bool]:
    """The body as feedback items, and whether it was a single object (not a list)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise APIError(400, f"The request body is not valid JSON: {error}.") from None
    single = isinstance(body, dict)
    if not single and not isinstance(body, list):
        raise APIError(422, "The body must be a feedback object or a list of them.")
    entries: list[Any] = [body] if single else body
    if not entries:
        raise APIError(422, "The feedback list is empty.")
    if len(entries) > max_batch:
        raise APIError(
            422,
            f"At most {max_batch} feedback items per request (got {len(entries)}).",
            code="batch_too_large",
        )
    items = []
    for index, entry in enumerate(entries):
        try:
            parsed = FeedbackIn.model_validate(entry)
        except ValidationError as error:
            first = error.errors()[0]
            loc = ".".join(str(part) for part in first.get("loc", ()))
            where = f"[{index}]" if not single else ""
            param = f"{where}.{loc}".strip(".") if loc else (where or None)
            message = first.get("msg", "invalid value").removeprefix("Value error, ")
            raise APIError(422, f"{param or 'body'}: {message}", param=param) from None
        items.append(FeedbackItem(parsed.id, parsed.correct, parsed.label))
    return items, single


def _buckets(request: Request) -> TokenBuckets | None:
    """The app's feedback rate limiter (None when `feedback_rate_per_s` is 0 or unset)."""
    return per_app(
        request.app, "feedback_buckets", lambda: feedback_buckets(request.app.state.settings)
    )


def feedback_buckets(settings: Settings) -> TokenBuckets | None:
    """A new feedback rate limiter for `settings` (None: `feedback_rate_per_s` is 0 or unset)."""
    rate = settings.feedback_rate_per_s
    if not rate:
        return None
    return TokenBuckets(rate, settings.feedback_burst)


def _check_rate(request: Request, principal: Principal, cost: int) -> None:
    """429 when this client key posts feedback faster than its bucket allows. Admin keys are
    not limited: they can set a profile outright, so a limit would not protect calibration."""
    if principal.is_admin:
        return
    buckets = _buckets(request)
    if buckets is None:
        return
    if cost > buckets.burst:
        raise APIError(
            422,
            f"At most {int(buckets.burst)} feedback items per request for this key "
            f"(feedback_burst; got {cost}).",
            code="batch_too_large",
        )
    wait = buckets.take(principal.key_id or principal.name, cost)
    if wait > 0:
        retry_after = str(max(1, math.ceil(wait))) if math.isfinite(wait) else "60"
        raise APIError(
            429,
            f"Feedback rate limit exceeded for this API key ({buckets.rate_per_s:g} items/s, "
            f"burst {int(buckets.burst)}). Retry after {retry_after} s.",
            code="rate_limit_exceeded",
            headers={"Retry-After": retry_after},
        )


def _unavailable(error: StoreError) -> APIError:
    return APIError(
        503,
        f"Feedback not recorded: the store is unavailable ({error}). Retry later.",
        code="store_unavailable",
        headers={"Retry-After": RETRY_AFTER_S},
    )


def _out(result: FeedbackResult) -> dict[str, Any]:
    return FeedbackOut(
        id=result.id, correct=result.correct, label=result.label, status=result.status
    ).model_dump()


@router.post(
    "/v1/feedback",
    openapi_extra=_BODY_SCHEMA,
    summary="Record whether responses were correct (one item or a batch; atomic).",
)
async def post_feedback(
    request: Request, principal: Principal = Depends(authenticate)
) -> dict[str, Any]:
    settings = request.app.state.settings
    max_batch = getattr(settings, "feedback_max_batch", DEFAULT_MAX_BATCH)
    items, single = _parse(await request.body(), max_batch)
    _check_rate(request, principal, len(items))
    store: Store = request.app.state.store
    writer = getattr(request.app.state, "writer", None)
    try:
        if writer is not None and any(writer.is_pending(item.id) for item in items):
            await writer.flush()  # the prediction was answered moments ago: write it first
        results = await asyncio.to_thread(
            store.record_feedback,
            items,
            principal.tenant,
            principal.is_admin,
            key_id=principal.key_id,
        )
    except FeedbackError as error:
        metrics.observe_feedback(None, "rejected", len(items))  # the batch is atomic
        raise APIError(error.status, error.message, param=error.id, code=error.code) from None
    except StoreError as error:
        raise _unavailable(error) from None
    _observe(results)
    if single:
        return _out(results[0])
    return {"object": "list", "data": [_out(result) for result in results]}


def _observe(results: list[FeedbackResult]) -> None:
    for result in results:
        if result.status == "unchanged":
            outcome = "unchanged"
        else:
            outcome = "correct" if result.correct else "incorrect"
        metrics.observe_feedback(result.model, outcome)


@router.get("/v1/feedback/{id}", summary="The feedback stored for one response id.")
async def get_feedback(
    id: str, request: Request, principal: Principal = Depends(authenticate)
) -> dict[str, Any]:
    store: Store = request.app.state.store
    try:
        record = await asyncio.to_thread(store.get_feedback, id)
    except StoreError as error:
        raise _unavailable(error) from None
    if record is None:
        raise APIError(404, f"No feedback recorded for id {id!r}.", param="id")
    if not principal.is_admin and record.prediction_tenant != principal.tenant:
        raise APIError(403, f"Prediction {id!r} belongs to another tenant.", param="id")
    body = {
        "object": "feedback",
        "id": record.id,
        "correct": record.correct,
        "label": record.label,
        "true_index": record.true_index,
        "tenant": record.tenant,
        "created_at": record.created_at.isoformat(),
    }
    if principal.is_admin:  # audit: which key gave this label (docs/security.md)
        body["key_id"] = record.key_id
    return body
