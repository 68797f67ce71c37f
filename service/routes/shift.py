"""`GET /v1/calibration/models/{model}/shift?task=`: the label-free input-shift gauge.

Any key may read it, like the reliability report. The body: the reference size (fit-window
predictions with an input embedding), the window size (requests this worker saw), and per
modality with data on both sides the score, the permutation threshold and whether the window is
flagged (docs/api.md). The reference is the one of the profile version (model, task) is served
with right now; the test runs in a thread.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from service.auth import Principal, authenticate
from service.errors import APIError
from service.routes.calibration import TaskQuery, _check_task, _store_call
from service.shift import ShiftMonitor

__all__ = ["router"]

router = APIRouter(tags=["calibration"])


@router.get(
    "/v1/calibration/models/{model:path}/shift",
    summary="Label-free input shift of recent requests against the active profile's fit window.",
)
async def input_shift(
    model: str,
    request: Request,
    task: str = TaskQuery,
    _: Principal = Depends(authenticate),
) -> dict[str, Any]:
    _check_task(task)
    monitor: ShiftMonitor | None = getattr(request.app.state, "shift", None)
    if monitor is None:
        raise APIError(
            404,
            "The input-shift gauge is off on this gateway (shift_enabled: false).",
            code="shift_disabled",
        )
    store = request.app.state.store
    stored = await _store_call(store.active_version, model, task)
    if stored is None and not monitor.has_window(model, task):
        raise APIError(
            404,
            f"Nothing known about model {model!r}, task {task!r}: no stored profile and no "
            f"request served by this gateway process since it started.",
            param="model",
            code="model_not_found",
        )
    profile = await request.app.state.profiles.get(model, task)
    served = (profile.task, profile.version) if profile.version > 0 else None
    report = await _store_call(monitor.report, model, task, served)
    return report.to_dict()
