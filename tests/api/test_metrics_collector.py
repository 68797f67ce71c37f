"""CalibrationCollector: the calibration-health gauges come from the active profiles' stored
metrics (a real profile from `calibrators.refit_profile`), with the right labels and values."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from prometheus_client.core import Metric

from calibrators import Profile
from calibrators.refit import LabeledSet, RefitPolicy, refit_profile
from service.calibration_health import HEALTH_METRIC_NAMES, CalibrationCollector, CalibrationState
from service.store import RefitTally


def _refitted_profile(model: str = "qwen", task: str = "vqa") -> Profile:
    """A real temperature-scaled profile fitted on overconfident synthetic 4-option answers."""
    rng = np.random.default_rng(7)
    n, k = 600, 4
    truth = rng.integers(0, k, n)
    logits = rng.normal(0.0, 1.0, (n, k))
    logits[np.arange(n), truth] += 1.0
    logits *= 3.0  # overconfident: the fitted temperature should be well above 1
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    chosen = logprobs.argmax(axis=1)
    data = LabeledSet(
        ids=[f"p{i}" for i in range(n)],
        mode="options",
        correct=(chosen == truth).astype(np.float64),
        option_logprobs=logprobs,
        labels=truth,
        chosen=chosen,
    )
    result = refit_profile(data, Profile.identity(model, task), RefitPolicy())
    assert result.activate and result.candidate is not None
    return result.candidate


def _samples(
    collector: CalibrationCollector,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in collector.collect():
        assert isinstance(family, Metric)
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


@pytest.fixture(scope="module")
def profile() -> Profile:
    return _refitted_profile()


def test_gauges_equal_the_profiles_stored_metrics(profile: Profile) -> None:
    fitted = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    state = CalibrationState(
        model="qwen",
        task="vqa",
        profile=profile,
        recent_mean_raw_confidence=0.91,
        recent_mean_calibrated_confidence=0.74,
        confidence_psi=0.07,
        last_refit_success_at=fitted,
    )
    got = _samples(CalibrationCollector(lambda: [state]))
    m = profile.metrics
    labels = {"model": "qwen", "task": "vqa"}
    for stage in ("raw", "calibrated"):
        for name in ("ece", "brier", "nll"):
            assert got[_key(f"calib_{name}", **labels, stage=stage)] == pytest.approx(
                m[stage][name]
            )
    assert got[_key("calib_accuracy", **labels)] == pytest.approx(m["accuracy"])
    assert got[_key("calib_coverage", **labels)] == pytest.approx(m["coverage"])
    assert got[_key("calib_selective_risk", **labels)] == pytest.approx(m["selective_risk"])
    assert got[_key("calib_temperature", **labels)] == pytest.approx(
        profile.calibrator["temperature"]
    )
    assert profile.calibrator["temperature"] > 1.5  # the fit really saw overconfidence
    assert got[_key("calib_threshold", **labels)] == pytest.approx(profile.threshold)
    assert got[_key("calib_profile_version", **labels)] == profile.version
    assert got[_key("calib_labels", **labels)] == profile.n_labels == 600
    assert got[_key("calib_estimated_accuracy", **labels, stage="raw")] == 0.91
    assert got[_key("calib_estimated_accuracy", **labels, stage="calibrated")] == 0.74
    assert got[_key("calib_confidence_drift_psi", **labels)] == 0.07
    assert got[_key("calib_last_refit_success_timestamp_seconds", **labels)] == fitted.timestamp()
    assert got[_key("calib_calibration_source_up")] == 1.0
    # The refit made the held-out calibration better, and the gauges show it.
    assert (
        got[_key("calib_ece", **labels, stage="calibrated")]
        < got[_key("calib_ece", **labels, stage="raw")]
    )


def test_stored_version_metrics_override_the_profiles_own(profile: Profile) -> None:
    stored = {"raw": {"ece": 0.3}, "calibrated": {"ece": 0.02}, "accuracy": 0.6}
    state = CalibrationState("qwen", "vqa", profile=profile, metrics=stored)
    got = _samples(CalibrationCollector(lambda: [state]))
    assert got[_key("calib_ece", model="qwen", task="vqa", stage="calibrated")] == 0.02
    assert got[_key("calib_accuracy", model="qwen", task="vqa")] == 0.6


def test_flat_metric_keys_are_read_too() -> None:
    profile = Profile(model="m", task="default", version=3, method="none", threshold=0.4)
    state = CalibrationState(
        "m", "default", profile=profile, metrics={"ece_raw": 0.2, "ece_calibrated": 0.05}
    )
    got = _samples(CalibrationCollector(lambda: [state]))
    assert got[_key("calib_ece", model="m", task="default", stage="raw")] == 0.2
    assert got[_key("calib_ece", model="m", task="default", stage="calibrated")] == 0.05
    assert got[_key("calib_threshold", model="m", task="default")] == 0.4
    assert got[_key("calib_profile_version", model="m", task="default")] == 3


def test_unknown_or_missing_values_are_left_out_not_nan() -> None:
    profile = Profile.identity("m")  # no fit yet: no metrics, no temperature, no threshold
    state = CalibrationState("m", "default", profile=profile, confidence_psi=math.nan)
    got = _samples(CalibrationCollector(lambda: [state]))
    names = {name for name, _ in got}
    assert names == {"calib_profile_version", "calib_labels", "calib_calibration_source_up"}
    assert all(math.isfinite(v) for v in got.values())


def test_every_family_is_described_without_reading_the_source() -> None:
    def explode() -> list[CalibrationState]:
        raise AssertionError("describe() must not read the store")

    collector = CalibrationCollector(explode, refit_source=explode)
    described = [family.name for family in collector.describe()]
    refit_families = ["calib_refits", "calib_refit_failures", "calib_refit_duration_seconds"]
    assert described == [*HEALTH_METRIC_NAMES, *refit_families]


def test_source_is_read_at_most_once_per_cache_window() -> None:
    calls: list[int] = []
    now = [100.0]

    def source() -> list[CalibrationState]:
        calls.append(1)
        return [CalibrationState("m", "t", confidence_psi=float(len(calls)))]

    collector = CalibrationCollector(source, cache_seconds=5.0, clock=lambda: now[0])
    psi = _key("calib_confidence_drift_psi", model="m", task="t")
    assert _samples(collector)[psi] == 1.0
    now[0] += 4.9
    assert _samples(collector)[psi] == 1.0
    now[0] += 0.2
    assert _samples(collector)[psi] == 2.0
    collector.invalidate()
    assert _samples(collector)[psi] == 3.0
    assert len(calls) == 3


def test_a_failing_source_serves_the_last_state_and_reports_down() -> None:
    now = [0.0]
    fail = [False]

    def source() -> list[CalibrationState]:
        if fail[0]:
            raise RuntimeError("database is gone")
        return [CalibrationState("m", "t", confidence_psi=0.3)]

    collector = CalibrationCollector(source, cache_seconds=1.0, clock=lambda: now[0])
    assert _samples(collector)[_key("calib_calibration_source_up")] == 1.0
    fail[0] = True
    now[0] += 2
    got = _samples(collector)
    assert got[_key("calib_calibration_source_up")] == 0.0
    assert got[_key("calib_confidence_drift_psi", model="m", task="t")] == 0.3


def _tally(model: str, task: str, status: str, le: str, count: int, total: float, at: float):
    return RefitTally(model, task, status, le, count, total, datetime.fromtimestamp(at, UTC))


def test_refit_counters_come_from_the_store_tallies_per_model() -> None:
    """Tallies of every task add up per model; too few labels counts as rejected; the
    histogram is cumulative; the last failure is per (model, task)."""
    tallies = [
        _tally("qwen", "vqa", "activated", "1.0", 2, 1.5, 1000.0),
        _tally("qwen", "vqa", "failed", "0.1", 1, 0.05, 2000.0),
        _tally("qwen", "ocr", "failed", "+Inf", 1, 4000.0, 1500.0),
        _tally("qwen", "ocr", "insufficient_labels", "0.25", 3, 0.6, 900.0),
        # A bucket bound that is not (or no longer) in the list counts in the next one up.
        _tally("gemma", "default", "rejected", "0.75", 1, 0.7, 800.0),
    ]
    got = _samples(CalibrationCollector(list, refit_source=lambda: tallies))
    assert got[_key("calib_refits_total", model="qwen", outcome="activated")] == 2
    assert got[_key("calib_refits_total", model="qwen", outcome="rejected")] == 3
    assert got[_key("calib_refits_total", model="qwen", outcome="failed")] == 2
    assert got[_key("calib_refit_failures_total", model="qwen")] == 2
    # Every outcome series exists from a model's first attempt, at 0 until it happens.
    assert got[_key("calib_refits_total", model="gemma", outcome="failed")] == 0
    assert got[_key("calib_refit_failures_total", model="gemma")] == 0
    assert got[_key("calib_refits_total", model="gemma", outcome="rejected")] == 1
    bucket = "calib_refit_duration_seconds_bucket"
    assert got[_key(bucket, model="qwen", le="0.1")] == 1
    assert got[_key(bucket, model="qwen", le="0.25")] == 4
    assert got[_key(bucket, model="qwen", le="1.0")] == 6
    assert got[_key(bucket, model="qwen", le="1800.0")] == 6
    assert got[_key(bucket, model="qwen", le="+Inf")] == 7
    assert got[_key("calib_refit_duration_seconds_count", model="qwen")] == 7
    assert got[_key("calib_refit_duration_seconds_sum", model="qwen")] == pytest.approx(4002.15)
    assert got[_key(bucket, model="gemma", le="0.5")] == 0
    assert got[_key(bucket, model="gemma", le="1.0")] == 1
    failure = "calib_last_refit_failure_timestamp_seconds"
    assert got[_key(failure, model="qwen", task="vqa")] == 2000.0
    assert got[_key(failure, model="qwen", task="ocr")] == 1500.0
    assert not any(name == failure and dict(labels)["model"] == "gemma" for name, labels in got)


def test_a_failing_refit_source_serves_the_last_totals_and_reports_down() -> None:
    now = [0.0]
    fail = [False]

    def refits() -> list[RefitTally]:
        if fail[0]:
            raise RuntimeError("database is gone")
        return [_tally("m", "t", "failed", "1.0", 1, 0.5, 10.0)]

    collector = CalibrationCollector(
        list, refit_source=refits, cache_seconds=1.0, clock=lambda: now[0]
    )
    assert _samples(collector)[_key("calib_calibration_source_up")] == 1.0
    fail[0] = True
    now[0] += 2
    got = _samples(collector)
    assert got[_key("calib_calibration_source_up")] == 0.0
    assert got[_key("calib_refit_failures_total", model="m")] == 1
