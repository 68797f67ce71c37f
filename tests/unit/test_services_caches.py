"""The per-app caches: fields of `Services` in the gateway, built on first use on a bare app."""

from __future__ import annotations

import dataclasses

from fastapi import FastAPI

from service.calibration_health import CalibrationCollector
from service.guarantee_monitor import GuaranteeCollector
from service.services import AppState, Services, per_app


def _app_with_services(collector: CalibrationCollector) -> FastAPI:
    app = FastAPI()
    app.state = AppState()
    values: dict[str, object] = {f.name: object() for f in dataclasses.fields(Services)}
    values["calibration_collector"] = collector
    values["guarantee_collector"] = GuaranteeCollector(list)
    values["prompt_opt_tasks"] = set()
    app.state.services = Services(**values)  # type: ignore[arg-type]
    return app


def test_a_built_app_reads_its_caches_from_services_and_never_builds() -> None:
    collector = CalibrationCollector(list)
    app = _app_with_services(collector)

    def never() -> object:
        raise AssertionError("built although Services has it")

    assert per_app(app, "calibration_collector", never) is collector
    assert per_app(app, "prompt_opt_tasks", never) is app.state.services.prompt_opt_tasks


def test_setting_metrics_cache_seconds_on_the_state_reaches_the_running_collector() -> None:
    collector = CalibrationCollector(list, cache_seconds=5.0)
    app = _app_with_services(collector)
    app.state.metrics_cache_seconds = 0.0
    assert collector.cache_seconds == 0.0
    assert app.state.services.guarantee_collector.cache_seconds == 0.0
    assert app.state.metrics_cache_seconds == 0.0
    assert app.state.services.metrics_cache_seconds == 0.0


def test_a_bare_app_builds_a_cache_once_and_keeps_it_on_the_state() -> None:
    app = FastAPI()
    built: list[set[int]] = []

    def build() -> set[int]:
        built.append(set())
        return built[-1]

    first = per_app(app, "prompt_opt_tasks", build)
    assert per_app(app, "prompt_opt_tasks", build) is first
    assert app.state.prompt_opt_tasks is first
    assert len(built) == 1


def test_a_bare_app_does_not_keep_a_none_and_the_key_cache_stays_on_the_state() -> None:
    app = FastAPI()
    assert per_app(app, "feedback_buckets", lambda: None) is None
    assert not hasattr(app.state, "feedback_buckets")  # built again next time, as before
    collector = CalibrationCollector(list)
    built = _app_with_services(collector)
    marker = object()
    built.state.key_cache = marker
    assert per_app(built, "key_cache", object) is marker  # not a Services field
