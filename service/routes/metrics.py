"""`GET /metrics`: the Prometheus exposition (see service/metrics.py and docs/metrics.md).

Reads from `request.app.state`, all optional:

* the calibration-health collector (`service.calibration_health.collector_for`: the one in
  `Services`, or on an app without them a ready ``calibration_collector``, or one built once
  from ``calibration_source`` and ``refit_source``);
* the guarantee monitor's collector (`service.guarantee_monitor.guarantee_collector_for`);
* ``prediction_writer`` — the `PredictionWriter`, whose drop/failure counters are synced at scrape;
* ``shift`` — the `ShiftMonitor`, whose input-shift gauges are computed at scrape.

The handler is a plain ``def`` on purpose: FastAPI runs it in the thread pool, so the store read
behind the calibration gauges never blocks the event loop.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from service.calibration_health import collector_for
from service.errors import APIError
from service.guarantee_monitor import guarantee_collector_for
from service.metrics import render_metrics, sync_prediction_writer
from service.shift import ShiftCollector

__all__ = ["router"]

router = APIRouter()


def _check_metrics_key(request: Request) -> None:
    """With `metrics_key` set, only `Authorization: Bearer <metrics_key>` may scrape (401)."""
    settings = getattr(request.app.state, "settings", None)
    expected = getattr(settings, "metrics_key", None)
    if not expected:
        return
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode("utf-8"), expected.encode("utf-8")
    ):
        raise APIError(
            401,
            "Metrics need 'Authorization: Bearer <metrics_key>'.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Every metric of the service, in the format the scraper asks for."""
    state = request.app.state
    _check_metrics_key(request)
    writer = getattr(state, "prediction_writer", None)
    if writer is not None:
        sync_prediction_writer(writer)
    found = (collector_for(request.app), guarantee_collector_for(request.app))
    collectors: list[object] = [collector for collector in found if collector is not None]
    monitor = getattr(state, "shift", None)
    if monitor is not None:
        collectors.append(ShiftCollector(monitor))
    body, content_type = render_metrics(*collectors, accept=request.headers.get("accept"))
    return Response(content=body, headers={"Content-Type": content_type})
