"""The /metrics exposition: every metric of the contract, valid for `promtool check metrics`,
correct request-path arithmetic, and the route serving it."""

from __future__ import annotations

import platform
import shutil
import subprocess
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from calibrators import Profile
from service import metrics
from service.calibration_health import CalibrationCollector, CalibrationState
from service.guarantee_monitor import (
    GuaranteeCollector,
    selective_risk_state,
    set_coverage_state,
)
from service.metrics import REGISTRY, exported_series_names, render_metrics
from service.routes.metrics import router
from service.shift import RequestInputs, ShiftCollector, ShiftMonitor
from service.store import FeedbackItem, PredictionRecord, RefitTally, Store

#: The made-up model names below are "configured" for these tests (only known models get their
#: own label value; see test_only_known_models_get_a_label_of_their_own).
metrics.set_known_models("test_metrics_exposition", ["expo", "arith", "noup"])

# The metric names of docs/metrics.md, as series names (the contract the dashboard relies on).
CONTRACT = {
    "calib_requests_total",
    "calib_request_duration_seconds_bucket",
    "calib_gateway_overhead_seconds_bucket",
    "calib_upstream_duration_seconds_bucket",
    "calib_upstream_errors_total",
    "calib_confidence_bucket",
    "calib_abstentions_total",
    "calib_predictions_total",
    "calib_predictions_dropped_total",
    "calib_prediction_write_failures_total",
    "calib_feedback_total",
    "calib_visual_reliance_bucket",
    "calib_visual_reliance_low_share",
    "calib_visual_probes_total",
    "calib_ece",
    "calib_brier",
    "calib_nll",
    "calib_accuracy",
    "calib_estimated_accuracy",
    "calib_temperature",
    "calib_threshold",
    "calib_coverage",
    "calib_selective_risk",
    "calib_profile_version",
    "calib_labels",
    "calib_confidence_drift_psi",
    "calib_refit_duration_seconds_bucket",
    "calib_last_refit_success_timestamp_seconds",
    "calib_refit_failures_total",
    "calib_refits_total",
    "calib_realized_selective_risk",
    "calib_realized_coverage",
    "calib_realized_set_coverage",
    "calib_realized_guarantee_labels",
    "calib_guarantee_target",
    "calib_guarantee_p_value",
    "calib_guarantee_broken",
    "calib_last_refit_failure_timestamp_seconds",
    "calib_build_info",
    "calib_input_shift_score",
    "calib_input_shift_threshold",
}

OPENMETRICS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def _full_profile() -> Profile:
    return Profile(
        model="expo",
        task="vqa",
        version=4,
        method="temperature",
        calibrator={"type": "temperature", "temperature": 1.8},
        threshold=0.55,
        metrics={
            "raw": {"ece": 0.21, "brier": 0.25, "nll": 0.9},
            "calibrated": {"ece": 0.04, "brier": 0.19, "nll": 0.6},
            "accuracy": 0.7,
            "coverage": 0.8,
            "selective_risk": 0.09,
        },
        n_labels=512,
    )


def _full_collector() -> CalibrationCollector:
    state = CalibrationState(
        "expo",
        "vqa",
        profile=_full_profile(),
        recent_mean_raw_confidence=0.9,
        recent_mean_calibrated_confidence=0.72,
        confidence_psi=0.05,
        last_refit_success_at=1_700_000_000.0,
    )
    tallies = [
        RefitTally("expo", "vqa", "failed", "2.5", 1, 1.5, datetime.fromtimestamp(1.7e9, UTC))
    ]
    return CalibrationCollector(lambda: [state], refit_source=lambda: tallies)


def _shift_collector(tmp_path) -> ShiftCollector:  # type: ignore[no-untyped-def]
    """A real monitor on a real SQLite store: 25 labeled requests, a profile version fitted on
    them (its reference), then 25 requests in the window."""
    store = Store.open(f"sqlite:///{tmp_path / 'shift.db'}")
    monitor = ShiftMonitor(store, min_samples=20, permutations=99)

    def served(start: int, version: int) -> list[PredictionRecord]:
        records = []
        for i in range(start, start + 25):
            record = PredictionRecord(
                f"shift-{i}", "expo", "vqa", "default", "options", None, None, "A", 0.5, 0.5,
                profile_version=version,
            )  # fmt: skip
            monitor.observe(record, RequestInputs(f"question {i} about things", profile_task="vqa"))
            records.append(record)
        monitor.before_write(records)
        store.insert_predictions(records)
        return records

    labeled = served(0, 0)
    store.record_feedback([FeedbackItem(r.id, correct=True) for r in labeled], "default", True)
    version = store.save_profile(Profile(model="expo", task="vqa"), activate=True, reason="t")
    served(100, version.version)
    return ShiftCollector(monitor)


def _observe_everything() -> None:
    """Every request-path metric observed at least once."""
    metrics.observe_request("expo", "/v1/chat/completions", 200, 0.35, 0.3)
    metrics.observe_upstream_error("expo", "timeout")
    metrics.observe_confidence("expo", "vqa", 0.93, 0.71)
    metrics.observe_abstention("expo", "vqa", "below_threshold")
    metrics.observe_prediction("expo", "vqa", "options")
    metrics.observe_feedback("expo", "correct")
    metrics.sync_prediction_writer(_Writer(dropped=1, failed_batches=1))
    metrics.observe_visual_probe("expo", "vqa", "done", 0.4, 0.1)


def _series_names(text: str) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("calib_")
    }


def _guarantee_collector() -> GuaranteeCollector:
    """Every guarantee gauge with a sample: a certified threshold and recorded sets."""
    risk = selective_risk_state(
        "expo", "vqa", [0.9, 0.8, 0.2], [True, False, True], 0.5, 0.1, certified=True
    )
    sets = set_coverage_state("expo", "vqa", [({"set_indices": [0], "set_coverage": 0.9}, True, 0)])
    return GuaranteeCollector(lambda: [risk, sets] if sets is not None else [risk])


def test_every_contract_metric_is_exported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _observe_everything()
    body, _ = render_metrics(_full_collector(), _guarantee_collector(), _shift_collector(tmp_path))
    names = _series_names(body.decode())
    assert names >= CONTRACT, sorted(CONTRACT - names)
    # What is exported is exactly what `exported_series_names` (used by the deploy checks) says.
    assert names == exported_series_names()


def test_exposition_passes_promtool_check_metrics() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    _observe_everything()
    body, content_type = render_metrics(_full_collector(), _guarantee_collector())
    assert content_type.startswith("text/plain; version=0.0.4")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_openmetrics_when_the_scraper_asks_for_it() -> None:
    _observe_everything()
    body, content_type = render_metrics(_full_collector(), accept=OPENMETRICS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    assert b'calib_ece{model="expo",stage="calibrated",task="vqa"} 0.04' in body


class _Writer:
    """Stands in for `PredictionWriter`: only its two counters matter here."""

    def __init__(self, dropped: int = 0, failed_batches: int = 0) -> None:
        self.dropped = dropped
        self.failed_batches = failed_batches


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_overhead_is_total_minus_upstream() -> None:
    labels = {"model": "arith", "endpoint": "/v1/completions"}
    metrics.observe_request("arith", "/v1/completions", 200, 0.5, 0.375)
    assert _value("calib_request_duration_seconds_sum", **labels) == pytest.approx(0.5)
    assert _value("calib_upstream_duration_seconds_sum", **labels) == pytest.approx(0.375)
    assert _value("calib_gateway_overhead_seconds_sum", **labels) == pytest.approx(0.125)
    assert _value("calib_requests_total", code="200", **labels) == 1


def test_a_request_that_never_went_upstream_has_no_overhead_sample() -> None:
    labels = {"model": "noup", "endpoint": "/v1/chat/completions"}
    metrics.observe_request("noup", "/v1/chat/completions", 401, 0.002)
    assert _value("calib_requests_total", code="401", **labels) == 1
    assert _value("calib_request_duration_seconds_count", **labels) == 1
    assert _value("calib_gateway_overhead_seconds_count", **labels) == 0
    assert _value("calib_upstream_duration_seconds_count", **labels) == 0


def test_label_values_outside_the_vocabulary_are_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        metrics.observe_upstream_error("m", "kaboom")
    with pytest.raises(ValueError, match="reason"):
        metrics.observe_abstention("m", "t", "tired")
    with pytest.raises(ValueError, match="outcome"):
        metrics.observe_feedback("m", "maybe")


def test_only_known_models_get_a_label_of_their_own() -> None:
    metrics.set_known_models("test-a", ["real-a"])
    metrics.set_known_models("test-b", ["real-b"])
    try:
        label = metrics._model_label
        assert [label(v) for v in ("real-a", "real-b", "made-up", None, "")] == [
            "real-a",
            "real-b",
            metrics.OVERFLOW_LABEL,
            metrics.UNKNOWN_LABEL,
            metrics.UNKNOWN_LABEL,
        ]
        metrics.set_known_models("test-b", ["real-c"])  # a fresh list replaces the last one
        assert label("real-b") == metrics.OVERFLOW_LABEL and label("real-c") == "real-c"
        metrics.forget_known_models("test-a")
        assert label("real-a") == metrics.OVERFLOW_LABEL
    finally:
        metrics.forget_known_models("test-a")
        metrics.forget_known_models("test-b")


def test_build_info_names_the_installed_version() -> None:
    from importlib.metadata import version

    body, _ = render_metrics()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    (sample,) = families["calib_build_info"].samples
    assert sample.value == 1.0
    assert sample.labels["version"] == version("mllm-calib")
    assert sample.labels["python"] == platform.python_version()


def test_client_supplied_labels_are_bounded() -> None:
    bounded = metrics._BoundedLabel(2)
    assert [bounded(v) for v in ("a", "b", "c", "a", None)] == [
        "a",
        "b",
        metrics.OVERFLOW_LABEL,
        "a",
        metrics.UNKNOWN_LABEL,
    ]


def test_prediction_writer_counters_are_synced_by_increase_only() -> None:
    before_dropped = _value("calib_predictions_dropped_total")
    before_failed = _value("calib_prediction_write_failures_total")
    writer = _Writer(dropped=3, failed_batches=1)
    metrics.sync_prediction_writer(writer)
    metrics.sync_prediction_writer(writer)  # idempotent
    writer.dropped = 5
    metrics.sync_prediction_writer(writer)
    assert _value("calib_predictions_dropped_total") - before_dropped == 5
    assert _value("calib_prediction_write_failures_total") - before_failed == 1


def _app(**state: object) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    for key, value in state.items():
        setattr(app.state, key, value)
    return app


def test_route_serves_the_health_gauges_from_the_app_state_source() -> None:
    state = CalibrationState("route", "default", profile=_full_profile())
    app = _app(calibration_source=lambda: [state])
    with TestClient(app) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'calib_ece{model="route",stage="calibrated",task="default"} 0.04' in response.text
    assert 'calib_temperature{model="route",task="default"} 1.8' in response.text
    assert isinstance(app.state.calibration_collector, CalibrationCollector)


def test_route_negotiates_openmetrics_and_syncs_the_writer() -> None:
    before = _value("calib_predictions_dropped_total")
    app = _app(prediction_writer=_Writer(dropped=2))
    with TestClient(app) as client:
        response = client.get("/metrics", headers={"accept": OPENMETRICS_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert _value("calib_predictions_dropped_total") - before == 2
    # No calibration source configured: the request-path metrics are still served.
    assert "# TYPE calib_requests counter" in response.text
