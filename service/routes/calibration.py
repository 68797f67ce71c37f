"""`/v1/calibration/...`: profiles, their history, refits, manual edits, rollback, reliability.

* `GET /v1/calibration/models` (any key): every (model, task) with a stored profile;
* `GET /v1/calibration/models/{model}?task=` (any key): active profile, history, events;
* `POST /v1/calibration/models/{model}/refit?task=&wait=` (admin): run a refit, wait for the
  outcome, or 202 + a status URL with `wait=false`;
* `GET /v1/calibration/refits/{id}` (admin): a refit's state (any replica's: audit log);
* `PUT /v1/calibration/models/{model}/profile` (admin): set fields by hand, a new version;
* `POST /v1/calibration/models/{model}/rollback` (admin): re-activate an earlier version;
* `GET /v1/calibration/models/{model}/reliability[.svg]?task=&bins=` (any key): held-out
  reliability bins (JSON) or the diagram (SVG), raw vs calibrated.

Model names may contain `/` (``Qwen/Qwen2-VL-2B``): the routes with a suffix are declared first.
Store reads run in threads; refits run in `RefitRunner` (a worker process by default).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from calibrators import AbstainPolicy, Mode
from service import profile_operations
from service.auth import Principal, authenticate, require_admin
from service.errors import APIError
from service.refit.job import served_profile
from service.refit.runner import RefitRunner, outcome_from_event
from service.reliability import reliability_report, render_reliability_svg
from service.store import ProfileEvent, ProfileNotFound, ProfileVersion, Store, StoreError

__all__ = ["router"]

router = APIRouter(tags=["calibration"])

_TASK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_HIDDEN_METRICS = ("reference_confidences",)  # 101 quantiles: the drift baseline, not for humans
T = TypeVar("T")

TaskQuery = Query("default", description="Profiles are kept per (model, task).")


# ----------------------------------------------------------------------------- helpers


async def _store_call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except ProfileNotFound:
        raise
    except StoreError as error:
        raise APIError(
            503,
            f"The store is unavailable ({error}). Retry later.",
            code="store_unavailable",
            headers={"Retry-After": "1"},
        ) from None


def _check_task(task: str) -> str:
    if not _TASK_RE.match(task):
        raise APIError(
            422,
            "`task` must be a short name (letters, digits, '_', '-', '.'; at most 64).",
            param="task",
        )
    return task


def _store(request: Request) -> Store:
    return request.app.state.store


def _runner(request: Request) -> RefitRunner:
    return request.app.state.refit_runner


async def _stored_version(store: Store, model: str, task: str, version: int) -> ProfileVersion:
    """A version this request just wrote or activated; 404 if it was deleted meanwhile."""
    found = await _store_call(store.profile_version, model, task, version)
    if found is None:
        raise APIError(
            404,
            f"Model {model!r}, task {task!r} has no profile version {version}.",
            param="version",
            code="version_not_found",
        )
    return found


def _temperature(profile: Any) -> float | None:
    if profile.method == "temperature" and profile.calibrator:
        return float(profile.calibrator.get("temperature", 1.0))
    return None


def _public_metrics(metrics: Any) -> dict[str, Any]:
    if not isinstance(metrics, dict):
        return {}
    return {key: value for key, value in metrics.items() if key not in _HIDDEN_METRICS}


def _key_metrics(metrics: Any) -> dict[str, Any]:
    metrics = metrics if isinstance(metrics, dict) else {}

    def stage(name: str, key: str) -> Any:
        block = metrics.get(name)
        return block.get(key) if isinstance(block, dict) else None

    return {
        "ece_raw": stage("raw", "ece"),
        "ece_calibrated": stage("calibrated", "ece"),
        "nll_calibrated": stage("calibrated", "nll"),
        "accuracy": metrics.get("accuracy"),
        "coverage": metrics.get("coverage"),
        "selective_risk": metrics.get("selective_risk"),
        "labels": metrics.get("labels"),
    }


def _version_body(version: ProfileVersion) -> dict[str, Any]:
    profile = version.profile
    return {
        "version": version.version,
        "active": version.active,
        "reason": version.reason,
        "created_at": version.created_at.isoformat(),
        "activated_at": version.activated_at.isoformat() if version.activated_at else None,
        "mode": profile.mode,
        "method": profile.method,
        "temperature": _temperature(profile),
        "calibrator": profile.calibrator,
        "threshold": profile.threshold,
        "threshold_choice": profile.threshold_choice,
        "system_prompt": profile.system_prompt,
        "abstain": profile.abstain,
        "options": profile.options,
        "idk_option": profile.idk_option,
        "n_labels": profile.n_labels,
        "fitted_at": profile.fitted_at,
        "notes": profile.notes,
        "metrics": _public_metrics(version.metrics),
        # Prediction sets: the table's size and method, not its scores (up to 1,000 numbers).
        "conformal": (
            None
            if profile.conformal_table is None
            else {"method": profile.conformal_table.method, "n": profile.conformal_table.n}
        ),
    }


def _event_body(event: ProfileEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "trigger": event.trigger,
        "status": event.status,
        "reason": event.reason,
        "version": event.version,
        "n_labels": event.n_labels,
        "started_at": event.started_at.isoformat(),
        "finished_at": event.finished_at.isoformat() if event.finished_at else None,
    }


def _not_found(model: str, task: str) -> APIError:
    return APIError(
        404,
        f"No calibration profile stored for model {model!r}, task {task!r} (it is served with "
        f"the identity profile until a refit or a manual profile).",
        param="model",
        code="model_not_found",
    )


# ----------------------------------------------------------------------------- list, show


@router.get("/v1/calibration/models", summary="Every model/task with a stored profile.")
async def list_models(request: Request, _: Principal = Depends(authenticate)) -> dict[str, Any]:
    store = _store(request)

    def collect() -> list[dict[str, Any]]:
        data = []
        for model, task in store.profile_models():
            active = store.active_version(model, task)
            entry: dict[str, Any] = {"model": model, "task": task, "active_version": None}
            if active is not None:
                profile = active.profile
                entry.update(
                    active_version=active.version,
                    mode=profile.mode,
                    method=profile.method,
                    temperature=_temperature(profile),
                    threshold=profile.threshold,
                    n_labels=profile.n_labels,
                    fitted_at=profile.fitted_at,
                    metrics=_key_metrics(active.metrics),
                )
            data.append(entry)
        return data

    return {"object": "list", "data": await _store_call(collect)}


# ----------------------------------------------------------------------------- refit


@router.post(
    "/v1/calibration/models/{model:path}/refit",
    summary="Refit (model, task) now (admin). Waits for the outcome unless wait=false.",
    status_code=200,
    responses={202: {"description": "Started (wait=false); poll `status_url`."}},
)
async def refit(
    model: str,
    request: Request,
    task: str = TaskQuery,
    wait: bool = Query(True, description="Wait for the outcome (else 202 + status URL)."),
    _: Principal = Depends(require_admin),
) -> Any:
    _check_task(task)
    store, runner = _store(request), _runner(request)
    known = await _store_call(store.count_labels, model, task) > 0
    if not known and not await _store_call(store.profile_history, model, task):
        raise APIError(
            404,
            f"Nothing to refit for model {model!r}, task {task!r}: no labeled predictions and "
            f"no stored profile.",
            param="model",
            code="model_not_found",
        )
    if not wait:
        refit_id = runner.start(model, task, trigger="api")
        url = f"/v1/calibration/refits/{refit_id}"
        return JSONResponse(
            {
                "object": "calibration.refit",
                "id": refit_id,
                "model": model,
                "task": task,
                "status": "running",
                "status_url": url,
            },
            status_code=202,
            headers={"Location": url},
        )
    outcome = await runner.run(model, task, trigger="api")
    if outcome.status == "busy":
        raise APIError(
            409,
            f"Refit of {model!r}/{task!r} not started: {outcome.reason}. Retry later.",
            code="refit_in_progress",
            headers={"Retry-After": "5"},
        )
    if outcome.status == "failed":
        raise APIError(500, f"Refit {outcome.id} failed: {outcome.reason}", code="refit_failed")
    return outcome.to_dict()


@router.get("/v1/calibration/refits/{refit_id}", summary="State of a refit (admin).")
async def refit_status(
    refit_id: str, request: Request, _: Principal = Depends(require_admin)
) -> dict[str, Any]:
    outcome = _runner(request).status(refit_id)
    if outcome is None:
        event = await _store_call(_store(request).get_event, refit_id)
        if event is None or event.kind != "refit":
            raise APIError(404, f"No refit with id {refit_id!r}.", param="id")
        outcome = outcome_from_event(event)
    return outcome.to_dict()


# ----------------------------------------------------------------------------- manual edits


class ProfileUpdate(BaseModel):
    """Fields to set by hand; a field left out keeps its value, `null` clears it."""

    model_config = ConfigDict(extra="forbid")

    task: str = "default"
    temperature: float | None = Field(
        None, gt=0, le=100, description="Options mode: temperature scaling with this T; null: none."
    )
    threshold: float | None = Field(None, ge=0, le=1, description="Abstain below; null: never.")
    system_prompt: str | None = Field(None, max_length=100_000)
    abstain: AbstainPolicy | None = None
    options: list[str] | None = Field(None, min_length=2, max_length=64)
    idk_option: str | None = Field(None, min_length=1)
    mode: Mode | None = None
    notes: str | None = Field(None, max_length=2000)

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        if not _TASK_RE.match(value):
            raise ValueError("must be a short name (letters, digits, '_', '-', '.'; at most 64)")
        return value

    @field_validator("options")
    @classmethod
    def _options(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not all(option.strip() for option in value):
                raise ValueError("options must be non-empty strings")
            if len(set(value)) != len(value):
                raise ValueError("options must not repeat a label")
        return value


def _apply_update(base: Any, update: ProfileUpdate, given: set[str]) -> tuple[Any, list[str]]:
    """The edited profile and a description of the changes (422 on contradictions)."""
    changes: dict[str, Any] = {}
    said: list[str] = []
    calibration_changed = False
    if "mode" in given and update.mode is not None and update.mode != base.mode:
        changes["mode"] = update.mode
        calibration_changed = True
        said.append(f"mode={update.mode}")
    if "temperature" in given:
        if update.temperature is None:
            changes.update(method="none", calibrator=None)
            said.append("temperature=none")
        else:
            changes.update(
                method="temperature",
                calibrator={"type": "temperature", "temperature": float(update.temperature)},
            )
            said.append(f"temperature={update.temperature:g}")
        calibration_changed = True
    mode = changes.get("mode", base.mode)
    method = changes.get("method", base.method)
    if method == "temperature" and mode != "options":
        raise APIError(
            422, "Temperature scaling applies to options mode only.", param="temperature"
        )
    if method in ("platt", "isotonic") and "mode" in changes:
        changes.update(method="none", calibrator=None)  # a fitted sequence map does not transfer
    if "threshold" in given:
        changes.update(threshold=update.threshold, threshold_choice=None)
        said.append(f"threshold={update.threshold}")
    for name in ("system_prompt", "abstain", "options", "idk_option"):
        if name in given:
            value = getattr(update, name)
            if name == "abstain" and value is None:
                raise APIError(422, "abstain: must be annotate, replace or off.", param=name)
            changes[name] = value
            said.append(f"{name}={'set' if name == 'system_prompt' and value else value!r}")
    options = changes.get("options", base.options)
    idk = changes.get("idk_option", base.idk_option)
    if idk is not None and options is not None and idk not in options:
        raise APIError(422, "idk_option must be one of the options.", param="idk_option")
    if not said:
        raise APIError(422, "Nothing to change: give at least one profile field.", param=None)

    metrics = dict(base.metrics or {})
    if calibration_changed:
        metrics = {}  # held-out numbers of another calibration would be misleading
        # The conformal table holds scores under the old calibration: no prediction sets.
        changes.update(fitted_at=None, n_labels=0, conformal=None)
    elif "threshold" in given:
        for key in ("coverage", "selective_risk"):
            metrics.pop(key, None)
    changes["metrics"] = metrics
    changes["notes"] = update.notes or "manual"
    return dataclasses.replace(base, **changes), said


@router.put(
    "/v1/calibration/models/{model:path}/profile",
    summary="Set profile fields by hand (admin): a new active version.",
)
async def put_profile(
    model: str,
    update: ProfileUpdate,
    request: Request,
    principal: Principal = Depends(require_admin),
) -> dict[str, Any]:
    store = _store(request)
    task = update.task
    base = await _store_call(served_profile, store, model, task)
    edited, said = _apply_update(
        dataclasses.replace(base, task=task), update, update.model_fields_set
    )
    saved = await _store_call(
        profile_operations.save_manual_edit,
        store,
        model,
        task,
        edited,
        said,
        by=principal.name,
        trigger="api",
    )
    _runner(request).invalidate(model)
    version = await _stored_version(store, model, task, saved.version)
    return {"object": "calibration.profile", "model": model, "task": task, **_version_body(version)}


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The stored version to make active again.")
    task: str = "default"

    @field_validator("task")
    @classmethod
    def _task(cls, value: str) -> str:
        if not _TASK_RE.match(value):
            raise ValueError("must be a short name (letters, digits, '_', '-', '.'; at most 64)")
        return value


@router.post(
    "/v1/calibration/models/{model:path}/rollback",
    summary="Re-activate an earlier profile version (admin).",
)
async def rollback(
    model: str,
    body: RollbackIn,
    request: Request,
    principal: Principal = Depends(require_admin),
) -> dict[str, Any]:
    store = _store(request)
    try:
        done = await _store_call(
            profile_operations.rollback,
            store,
            model,
            body.task,
            body.version,
            by=principal.name,
            trigger="api",
        )
    except ProfileNotFound:
        raise APIError(
            404,
            f"Model {model!r}, task {body.task!r} has no profile version {body.version}.",
            param="version",
            code="version_not_found",
        ) from None
    _runner(request).invalidate(model)
    version = await _stored_version(store, model, body.task, body.version)
    return {
        "object": "calibration.profile",
        "model": model,
        "task": body.task,
        "previous_version": done.previous,
        **_version_body(version),
    }


# ----------------------------------------------------------------------------- reliability


async def _report(request: Request, model: str, task: str, bins: int) -> dict[str, Any]:
    _check_task(task)
    store = _store(request)
    version = await _store_call(store.active_version, model, task)
    if version is None:
        raise _not_found(model, task)
    config = _runner(request).config
    return await _store_call(reliability_report, store, config, version, n_bins=bins)


@router.get(
    "/v1/calibration/models/{model:path}/reliability.svg",
    summary="Reliability diagram (SVG) of the active profile on held-out labels.",
    response_class=Response,
)
async def reliability_svg(
    model: str,
    request: Request,
    task: str = TaskQuery,
    bins: int = Query(10, ge=1, le=50),
    _: Principal = Depends(authenticate),
) -> Response:
    report = await _report(request, model, task, bins)
    svg = await asyncio.to_thread(render_reliability_svg, report)
    return Response(content=svg, media_type="image/svg+xml")


@router.get(
    "/v1/calibration/models/{model:path}/reliability",
    summary="Reliability bins (raw vs calibrated) of the active profile on held-out labels.",
)
async def reliability(
    model: str,
    request: Request,
    task: str = TaskQuery,
    bins: int = Query(10, ge=1, le=50),
    _: Principal = Depends(authenticate),
) -> dict[str, Any]:
    return await _report(request, model, task, bins)


@router.get(
    "/v1/calibration/models/{model:path}",
    summary="Active profile, version history and recent profile events of (model, task).",
)
async def show_model(
    model: str,
    request: Request,
    task: str = TaskQuery,
    _: Principal = Depends(authenticate),
) -> dict[str, Any]:
    _check_task(task)
    store = _store(request)
    history = await _store_call(store.profile_history, model, task)
    if not history:
        raise _not_found(model, task)
    events = await _store_call(store.profile_events, model, task, limit=50)
    active = next((version for version in history if version.active), None)
    return {
        "object": "calibration.model",
        "model": model,
        "task": task,
        "active": _version_body(active) if active is not None else None,
        "history": [_version_body(version) for version in history],
        "events": [_event_body(event) for event in events],
    }
