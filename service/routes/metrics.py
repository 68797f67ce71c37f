"""`GET /metrics`: the Prometheus exposition (see service/metrics.py and docs/metrics.md).

Reads from `request.app.state`, all optional:

* ``calibration_collector`` — a ready `CalibrationCollector`; else
* ``calibration_source`` — a `CalibrationSource` callable, wrapped once in a `CalibrationCollector`
  (cache ``metrics_cache_seconds``, default 5 s) that is then kept as ``calibration_collector``;
  with ``refit_source`` (a `RefitSource`: the store's refit tallies) it exports the refit
  counters too;
* ``prediction_writer`` — the `PredictionWriter`, whose drop/failure counters are synced at scrape.

The handler is a plain ``def`` on purpose: FastAPI runs it in the thread pool, so the store read
behind the calibration gauges never blocks the event loop.
"""

from __future__ import annotations

import hmac
import threading
from typing import Any

from fastapi import APIRouter, Request, Response

from service.errors import APIError
from service.metrics import CalibrationCollector, render_metrics, sync_prediction_writer

__all__ = ["router"]

router = APIRouter()

_collector_lock = threading.Lock()


def _calibration_collector(state: Any) -> CalibrationCollector | None:
    collector = getattr(state, "calibration_collector", None)
    if collector is not None:
        return collector
    source = getattr(state, "calibration_source", None)
    if source is None:
        return None
    with _collector_lock:
        collector = getattr(state, "calibration_collector", None)
        if collector is None:
            cache_seconds = float(getattr(state, "metrics_cache_seconds", 5.0))
            collector = CalibrationCollector(
                source,
                refit_source=getattr(state, "refit_source", None),
                cache_seconds=cache_seconds,
            )
            state.calibration_collector = collector
        return collector


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
    collector = _calibration_collector(state)
    collectors = [collector] if collector is not None else []
    body, content_type = render_metrics(*collectors, accept=request.headers.get("accept"))
    return Response(content=body, headers={"Content-Type": content_type})
