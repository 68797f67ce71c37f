"""Every Prometheus metric the gateway exports, declared once, here (DESIGN §5, docs/metrics.md).

Two kinds of metrics, with two ways of being correct when uvicorn runs several workers:

* **Request-path events** (requests, latency, upstream errors, confidences, abstentions,
  predictions, feedback) are counters and histograms updated by the `observe_*` functions
  below. With one worker they live in this module's `REGISTRY`. With several workers the serve
  command sets ``PROMETHEUS_MULTIPROC_DIR`` *before* any worker imports prometheus-client, every
  worker then writes its values to memory-mapped files in that directory, and `render_metrics`
  merges all files (`MultiProcessCollector`), so whichever worker answers the scrape reports the
  sum over all workers. None of these metrics is a gauge, so no multiprocess gauge mode is needed.
* **Calibration health and refits** (ECE, Brier, NLL, accuracy, temperature, threshold,
  coverage, selective risk, profile version, labels, drift, last successful and failed refit, and
  the refit counters and duration histogram) are not process state at all: `CalibrationCollector`
  reads the active profiles, their stored metrics, a few recent-traffic statistics and the
  store's refit tallies at scrape time (cached a few seconds). Every worker and every replica
  therefore reports the same values, straight from the store, including profiles activated and
  refits run by another replica or by ``calib refit`` running as a (Kubernetes) cron job.

Client-supplied label values are bounded: a `model` gets its own label value only when it is
configured or listed by the upstream (`set_known_models`); anything else counts as ``_other``, so
made-up names can neither add series nor push a real model out. `calib_build_info` says which
build answers.

This module holds no application wiring: the `/metrics` route (`service.routes.metrics`) decides
where the source and the prediction writer come from.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import platform
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from calibrators import MODES

__all__ = [
    "ABSTAIN_REASONS",
    "FEEDBACK_OUTCOMES",
    "HEALTH_METRIC_NAMES",
    "MULTIPROCESS_DIR",
    "PREDICTION_MODES",
    "REFIT_BUCKETS",
    "REFIT_OUTCOMES",
    "REGISTRY",
    "STAGES",
    "UNKNOWN_LABEL",
    "UPSTREAM_ERROR_KINDS",
    "BuildInfoCollector",
    "CalibrationCollector",
    "CalibrationSource",
    "CalibrationState",
    "ProfileLike",
    "RefitSource",
    "RefitTallyLike",
    "build_info",
    "exported_series_names",
    "forget_known_models",
    "known_models",
    "observe_abstention",
    "observe_confidence",
    "observe_feedback",
    "observe_prediction",
    "observe_request",
    "observe_upstream_error",
    "prepare_multiprocess_dir",
    "render_metrics",
    "set_known_models",
    "sync_prediction_writer",
]

logger = logging.getLogger(__name__)

# `_created` series double the number of series for no dashboard or alert in this project.
disable_created_metrics()

#: The multiprocess directory this process writes to, or None (single process). Decided when
#: prometheus-client was first imported, exactly as prometheus-client itself decides it.
MULTIPROCESS_DIR: str | None = (
    os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112
    if values.ValueClass is not values.MutexValue
    else None
)

# --------------------------------------------------------------------------- label vocabularies

STAGES = ("raw", "calibrated")
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "status", "invalid_response", "stream_dropped")
ABSTAIN_REASONS = ("idk_option", "below_threshold")
PREDICTION_MODES = MODES
FEEDBACK_OUTCOMES = ("correct", "incorrect", "unchanged", "rejected")
REFIT_OUTCOMES = ("activated", "rejected", "failed")
#: A refit's stored status → its `outcome` label (a fit with too few labels did not activate).
REFIT_OUTCOME_OF_STATUS = {
    "activated": "activated",
    "rejected": "rejected",
    "insufficient_labels": "rejected",
    "failed": "failed",
}

#: Label value for a missing model or task (e.g. feedback for an unknown id).
UNKNOWN_LABEL = "_unknown"
#: Label value of a model that is neither configured nor listed by the upstream, and of tasks
#: beyond `MAX_LABEL_VALUES`.
OVERFLOW_LABEL = "_other"
#: Bound on distinct `task` values per process: tasks come from request bodies.
MAX_LABEL_VALUES = 100


class _BoundedLabel:
    """Keeps a client-supplied label (model, task) to a bounded set of values per process."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if value is None or value == "":
            return UNKNOWN_LABEL
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OVERFLOW_LABEL


class _KnownModels:
    """The model names that get a label value of their own: the union of named sources (the
    configured models, the upstream's current list; one set per app, so several apps in one
    process do not overwrite each other). Anything else is `OVERFLOW_LABEL`, so made-up names
    add no series and never take a known model's place. Lock-free on the request path: the
    union is a frozenset replaced whole."""

    def __init__(self) -> None:
        self._sources: dict[str, frozenset[str]] = {}
        self._known: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def set(self, source: str, names: Iterable[str]) -> None:
        with self._lock:
            self._sources[source] = frozenset(name for name in names if name)
            self._known = frozenset().union(*self._sources.values())

    def forget(self, source: str) -> None:
        with self._lock:
            self._sources.pop(source, None)
            self._known = frozenset().union(*self._sources.values())

    @property
    def known(self) -> frozenset[str]:
        return self._known

    def __call__(self, value: str | None) -> str:
        if value is None or value == "":
            return UNKNOWN_LABEL
        return value if value in self._known else OVERFLOW_LABEL


_model_label = _KnownModels()
_task_label = _BoundedLabel(MAX_LABEL_VALUES)


def set_known_models(source: str, names: Iterable[str]) -> None:
    """Let `names` be `model` label values, as the set named `source` (replaces its last set).

    The app calls it with its configured models and with each fresh upstream model list
    (`service.known_models`).
    """
    _model_label.set(source, names)


def forget_known_models(source: str) -> None:
    """Drop the set named `source` (an app shutting down)."""
    _model_label.forget(source)


def known_models() -> frozenset[str]:
    """Every model name that currently gets its own label value."""
    return _model_label.known


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


# --------------------------------------------------------------------------- request-path metrics

#: The gateway's own registry (single-process mode). Multiprocess mode renders from the files.
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# Whole requests take from milliseconds (a cached short answer) to minutes (long generations).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
# The gateway's own share should stay in the sub-millisecond to millisecond range.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
CONFIDENCE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05, 0.10, …, 1.0
REFIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

REQUESTS = Counter(
    "calib_requests",
    "Requests answered by the gateway, by model, endpoint (route template) and HTTP status code.",
    ["model", "endpoint", "code"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "calib_request_duration_seconds",
    "Wall time from request received to last byte sent, in seconds.",
    ["model", "endpoint"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
GATEWAY_OVERHEAD = Histogram(
    "calib_gateway_overhead_seconds",
    "Time of a proxied request not spent waiting on the upstream (request duration minus "
    "upstream duration), in seconds.",
    ["model", "endpoint"],
    buckets=OVERHEAD_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "calib_upstream_duration_seconds",
    "Time spent waiting on the upstream engine for a proxied request, in seconds.",
    ["model", "endpoint"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "calib_upstream_errors",
    "Failed upstream calls by kind: connect, timeout, status (5xx from the engine), "
    "invalid_response, stream_dropped.",
    ["model", "kind"],
    registry=REGISTRY,
)
CONFIDENCE = Histogram(
    "calib_confidence",
    "Per-response confidence, raw (uncalibrated) and calibrated.",
    ["model", "task", "stage"],
    buckets=CONFIDENCE_BUCKETS,
    registry=REGISTRY,
)
ABSTENTIONS = Counter(
    "calib_abstentions",
    "Responses flagged or replaced as 'I don't know', by reason (idk_option, below_threshold).",
    ["model", "task", "reason"],
    registry=REGISTRY,
)
PREDICTIONS = Counter(
    "calib_predictions",
    "Calibrated responses (predictions), by model, task and calibration mode.",
    ["model", "task", "mode"],
    registry=REGISTRY,
)
PREDICTIONS_DROPPED = Counter(
    "calib_predictions_dropped",
    "Predictions not recorded because the write-behind buffer was full.",
    registry=REGISTRY,
)
PREDICTION_WRITE_FAILURES = Counter(
    "calib_prediction_write_failures",
    "Prediction batches the write-behind writer failed to commit to the store.",
    registry=REGISTRY,
)
FEEDBACK = Counter(
    "calib_feedback",
    "Feedback items by outcome: correct, incorrect, unchanged (idempotent repeat), rejected.",
    ["model", "outcome"],
    registry=REGISTRY,
)


def observe_request(
    model: str | None,
    endpoint: str,
    code: int | str,
    total_s: float,
    upstream_s: float | None = None,
) -> None:
    """Count one finished request and its latency.

    `endpoint` is the route template (``/v1/chat/completions``), never a raw path. `total_s` runs
    from request received to last byte sent (for streams: the last chunk). `upstream_s` is the time
    spent waiting on the upstream (connect, response headers, and for streams every wait for the
    next chunk); None when no upstream call was made (e.g. a 401 or 422), in which case neither the
    upstream nor the overhead histogram is touched.
    """
    model_label = _model_label(model)
    REQUESTS.labels(model_label, endpoint, str(int(code))).inc()
    REQUEST_DURATION.labels(model_label, endpoint).observe(max(total_s, 0.0))
    if upstream_s is not None:
        upstream_s = max(upstream_s, 0.0)
        UPSTREAM_DURATION.labels(model_label, endpoint).observe(upstream_s)
        GATEWAY_OVERHEAD.labels(model_label, endpoint).observe(max(total_s - upstream_s, 0.0))


def observe_upstream_error(model: str | None, kind: str) -> None:
    """Count one failed upstream call (`kind` in `UPSTREAM_ERROR_KINDS`)."""
    UPSTREAM_ERRORS.labels(_model_label(model), _choice(kind, UPSTREAM_ERROR_KINDS, "kind")).inc()


def observe_confidence(model: str, task: str, raw: float | None, calibrated: float | None) -> None:
    """Record one response's raw and calibrated confidence (None = not available)."""
    model_label, task_label = _model_label(model), _task_label(task)
    if raw is not None and math.isfinite(raw):
        CONFIDENCE.labels(model_label, task_label, "raw").observe(raw)
    if calibrated is not None and math.isfinite(calibrated):
        CONFIDENCE.labels(model_label, task_label, "calibrated").observe(calibrated)


def observe_abstention(model: str, task: str, reason: str) -> None:
    """Count one abstention (`reason` in `ABSTAIN_REASONS`)."""
    ABSTENTIONS.labels(
        _model_label(model), _task_label(task), _choice(reason, ABSTAIN_REASONS, "reason")
    ).inc()


def observe_prediction(model: str, task: str, mode: str) -> None:
    """Count one calibrated response (`mode` in `PREDICTION_MODES`)."""
    PREDICTIONS.labels(
        _model_label(model), _task_label(task), _choice(mode, PREDICTION_MODES, "mode")
    ).inc()


def observe_feedback(model: str | None, outcome: str, count: int = 1) -> None:
    """Count feedback items (`outcome` in `FEEDBACK_OUTCOMES`; model None for an unknown id)."""
    FEEDBACK.labels(_model_label(model), _choice(outcome, FEEDBACK_OUTCOMES, "outcome")).inc(count)


# Last seen (dropped, failed_batches) per writer. Weak keys: a new writer never inherits the
# counts of a collected one; objects that cannot be weakly referenced are kept alive instead.
_writer_seen: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()
_writer_seen_strong: dict[int, tuple[Any, tuple[int, int]]] = {}
_writer_lock = threading.Lock()


def sync_prediction_writer(writer: Any) -> None:
    """Bring `calib_predictions_dropped_total` and `calib_prediction_write_failures_total` up to
    date with a `PredictionWriter`'s own counters (`dropped`, `failed_batches`).

    Idempotent: only the increase since the last call for this writer is added, so it may be
    called from the writer's flush loop and at scrape time alike.
    """
    dropped = int(getattr(writer, "dropped", 0) or 0)
    failed = int(getattr(writer, "failed_batches", 0) or 0)
    with _writer_lock:
        try:
            last_dropped, last_failed = _writer_seen.get(writer, (0, 0))
            _writer_seen[writer] = (dropped, failed)
        except TypeError:  # not weakly referenceable
            _, (last_dropped, last_failed) = _writer_seen_strong.get(id(writer), (None, (0, 0)))
            _writer_seen_strong[id(writer)] = (writer, (dropped, failed))
    if dropped > last_dropped:
        PREDICTIONS_DROPPED.inc(dropped - last_dropped)
    if failed > last_failed:
        PREDICTION_WRITE_FAILURES.inc(failed - last_failed)


# --------------------------------------------------------------------------- calibration health


@runtime_checkable
class ProfileLike(Protocol):
    """What the collector reads from a `calibrators.Profile` (attributes only)."""

    version: int
    method: str
    calibrator: Mapping[str, Any]
    threshold: float | None
    metrics: Mapping[str, Any] | None


@dataclass(frozen=True)
class CalibrationState:
    """Everything the metrics need to know about one (model, task), as of now.

    Built by the store side (see docs/metrics.md, "Calibration source"): the active profile, the
    metrics stored with its version, and statistics of recent traffic.
    """

    model: str
    task: str
    #: The active `calibrators.Profile` (or any object with the `ProfileLike` attributes).
    profile: Any | None = None
    #: The metrics stored with the active version (`ProfileVersion.metrics`); `profile.metrics`
    #: is used when this is None.
    metrics: Mapping[str, Any] | None = None
    #: Mean raw / calibrated confidence over recent traffic (label-free estimated accuracy).
    recent_mean_raw_confidence: float | None = None
    recent_mean_calibrated_confidence: float | None = None
    #: PSI of recent calibrated confidences against those of the window the profile was fit on.
    confidence_psi: float | None = None
    #: When the last refit attempt that ran to completion (activated or rejected) finished.
    last_refit_success_at: datetime | float | None = None


#: A callable returning the current state of every (model, task) that has an active profile.
CalibrationSource = Callable[[], Iterable[CalibrationState]]


@runtime_checkable
class RefitTallyLike(Protocol):
    """One running total of refit attempts (what `service.store.RefitTally` holds): attempts of
    (model, task) that ended with `status` and whose duration fell in the bucket with upper
    bound `le` (``"+Inf"`` for the last bucket; not cumulative)."""

    model: str
    task: str
    status: str
    le: str
    count: int
    duration_sum: float
    last_finished_at: datetime | float


#: A callable returning every refit tally (the store's `refit_tallies` table).
RefitSource = Callable[[], Iterable[RefitTallyLike]]

# Accepted spellings in a profile's metrics dict, first match wins. Canonical form (held-out):
# {"raw": {"ece", "brier", "nll", "accuracy"}, "calibrated": {...},
#  "accuracy", "coverage", "selective_risk", "labels"}.
_ALIASES: dict[str, tuple[str, ...]] = {
    "ece": ("ece", "expected_calibration_error"),
    "brier": ("brier", "brier_score"),
    "nll": ("nll", "negative_log_likelihood"),
    "accuracy": ("accuracy", "acc"),
    "coverage": ("coverage",),
    "selective_risk": ("selective_risk", "risk"),
    "labels": ("labels", "n_labels", "label_count", "n"),
}

_HEALTH: dict[str, tuple[str, tuple[str, ...]]] = {
    "calib_ece": (
        "Expected calibration error of the active profile on held-out labels, by stage.",
        ("model", "task", "stage"),
    ),
    "calib_brier": (
        "Brier score of the active profile on held-out labels, by stage.",
        ("model", "task", "stage"),
    ),
    "calib_nll": (
        "Negative log-likelihood (nats) of the active profile on held-out labels, by stage.",
        ("model", "task", "stage"),
    ),
    "calib_accuracy": (
        "Accuracy of the model's answers on the held-out labels of the active profile's fit.",
        ("model", "task"),
    ),
    "calib_estimated_accuracy": (
        "Label-free accuracy estimate: mean confidence over recent traffic, by stage.",
        ("model", "task", "stage"),
    ),
    "calib_temperature": ("Temperature of the active profile.", ("model", "task")),
    "calib_threshold": ("Abstain threshold of the active profile.", ("model", "task")),
    "calib_coverage": (
        "Fraction of held-out answers kept (not abstained) at the active threshold.",
        ("model", "task"),
    ),
    "calib_selective_risk": (
        "Error rate among kept held-out answers at the active threshold.",
        ("model", "task"),
    ),
    "calib_profile_version": ("Version number of the active profile.", ("model", "task")),
    "calib_labels": ("Labels used to fit the active profile.", ("model", "task")),
    "calib_confidence_drift_psi": (
        "Population stability index of recent confidences vs. the active profile's fit window.",
        ("model", "task"),
    ),
    "calib_last_refit_success_timestamp_seconds": (
        "Unix time the last refit that ran to completion (activated or rejected) finished.",
        ("model", "task"),
    ),
    "calib_last_refit_failure_timestamp_seconds": (
        "Unix time the last refit that failed with an error finished.",
        ("model", "task"),
    ),
    "calib_calibration_source_up": (
        "1 if the last read of the calibration state and refit totals from the store succeeded, "
        "else 0.",
        (),
    ),
}

#: Names of the gauges `CalibrationCollector` exports.
HEALTH_METRIC_NAMES = tuple(_HEALTH)

# Refit counters and histogram, read from the store's tallies (names kept from the time they
# were process counters: the dashboard and the alert rules select them).
_REFITS_HELP = (
    "Refit attempts by outcome (activated, rejected, failed), run by any replica or by "
    "`calib refit`; totals from the store."
)
_REFIT_FAILURES_HELP = (
    "Refit attempts that failed with an error (not a rejected challenger); totals from the store."
)
_REFIT_DURATION_HELP = (
    "Wall time of a refit attempt (load labels, fit, evaluate, store), in seconds; from the store."
)


def _refit_families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
    return (
        CounterMetricFamily("calib_refits", _REFITS_HELP, labels=["model", "outcome"]),
        CounterMetricFamily("calib_refit_failures", _REFIT_FAILURES_HELP, labels=["model"]),
        HistogramMetricFamily(
            "calib_refit_duration_seconds", _REFIT_DURATION_HELP, labels=["model"]
        ),
    )


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _lookup(metrics: Mapping[str, Any], name: str, stage: str | None = None) -> float | None:
    """Find `name` (for `stage`) in a metrics dict, nested by stage or flat (``ece_raw``)."""
    for key in _ALIASES[name]:
        if stage is None:
            candidates: list[Any] = [metrics.get(key)]
        else:
            nested = metrics.get(stage)
            candidates = [
                nested.get(key) if isinstance(nested, Mapping) else None,
                metrics.get(f"{key}_{stage}"),
                metrics.get(f"{stage}_{key}"),
            ]
        for candidate in candidates:
            number = _number(candidate)
            if number is not None:
                return number
    return None


def _temperature(profile: Any) -> float | None:
    number = _number(getattr(profile, "temperature", None))
    if number is not None:
        return number
    calibrator = getattr(profile, "calibrator", None)
    if isinstance(calibrator, Mapping):
        number = _number(calibrator.get("temperature"))
        if number is None and isinstance(calibrator.get("params"), Mapping):
            number = _number(calibrator["params"].get("temperature"))
        return number
    return None


def _timestamp(value: datetime | float | None) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    return _number(value)


class CalibrationCollector:
    """Custom collector: the calibration-health gauges, read from a `CalibrationSource`.

    The source is called at most once per `cache_seconds` (scrapes from several Prometheus servers
    or a dashboard refresh storm do not hammer the store). When it fails, the last good state is
    served and `calib_calibration_source_up` drops to 0.
    """

    def __init__(
        self,
        profile_source: CalibrationSource,
        *,
        refit_source: RefitSource | None = None,
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = profile_source
        self._refit_source = refit_source
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._states: list[CalibrationState] = []
        self._tallies: list[RefitTallyLike] = []
        self._fetched_at: float | None = None
        self._up = 1.0

    def invalidate(self) -> None:
        """Forget the cached state (e.g. right after this process activated a profile)."""
        with self._lock:
            self._fetched_at = None

    def _current(self) -> tuple[list[CalibrationState], list[RefitTallyLike], float]:
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._cache_seconds:
                up = 1.0
                try:
                    self._states = list(self._source())
                except Exception:
                    logger.exception("calibration source failed; serving the last known state")
                    up = 0.0
                if self._refit_source is not None:
                    try:
                        self._tallies = list(self._refit_source())
                    except Exception:
                        logger.exception("refit source failed; serving the last known totals")
                        up = 0.0
                self._up = up
                self._fetched_at = now
            return self._states, self._tallies, self._up

    def describe(self) -> Iterator[Metric]:
        """The gauge, counter and histogram families, without samples (no store access)."""
        for name, (documentation, labels) in _HEALTH.items():
            yield GaugeMetricFamily(name, documentation, labels=list(labels))
        yield from _refit_families()

    def collect(self) -> Iterator[Metric]:
        states, tallies, up = self._current()
        families = {
            name: GaugeMetricFamily(name, documentation, labels=list(labels))
            for name, (documentation, labels) in _HEALTH.items()
        }

        def add(name: str, labels: Sequence[str], value: float | None) -> None:
            if value is not None:
                families[name].add_metric(list(labels), value)

        for state in states:
            self._add_state(state, add)
        last_failure: dict[tuple[str, str], float] = {}
        for tally in tallies:
            finished = _timestamp(tally.last_finished_at)
            key = (tally.model, tally.task)
            if tally.status == "failed" and finished is not None:
                last_failure[key] = max(finished, last_failure.get(key, finished))
        for key, finished in sorted(last_failure.items()):
            add("calib_last_refit_failure_timestamp_seconds", key, finished)
        families["calib_calibration_source_up"].add_metric([], up)
        yield from families.values()
        yield from _refit_metrics(tallies)

    @staticmethod
    def _add_state(
        state: CalibrationState, add: Callable[[str, Sequence[str], float | None], None]
    ) -> None:
        profile = state.profile
        metrics: Mapping[str, Any] = state.metrics or getattr(profile, "metrics", None) or {}
        if not isinstance(metrics, Mapping):
            metrics = {}
        key = (state.model, state.task)
        for stage in STAGES:
            for name in ("ece", "brier", "nll"):
                add(f"calib_{name}", (*key, stage), _lookup(metrics, name, stage))
        accuracy = _lookup(metrics, "accuracy")
        if accuracy is None:
            accuracy = _lookup(metrics, "accuracy", "calibrated") or _lookup(
                metrics, "accuracy", "raw"
            )
        add("calib_accuracy", key, accuracy)
        add("calib_estimated_accuracy", (*key, "raw"), _number(state.recent_mean_raw_confidence))
        add(
            "calib_estimated_accuracy",
            (*key, "calibrated"),
            _number(state.recent_mean_calibrated_confidence),
        )
        choice = getattr(profile, "threshold_choice", None)
        choice = choice if isinstance(choice, Mapping) else {}
        for name in ("coverage", "selective_risk"):
            value = _lookup(metrics, name)
            add(f"calib_{name}", key, value if value is not None else _lookup(choice, name))
        if profile is not None:
            add("calib_temperature", key, _temperature(profile))
            add("calib_threshold", key, _number(getattr(profile, "threshold", None)))
            add("calib_profile_version", key, _number(getattr(profile, "version", None)))
        labels = _lookup(metrics, "labels")
        if labels is None:
            labels = _number(getattr(profile, "n_labels", None))
        add("calib_labels", key, labels)
        add("calib_confidence_drift_psi", key, _number(state.confidence_psi))
        add(
            "calib_last_refit_success_timestamp_seconds",
            key,
            _timestamp(state.last_refit_success_at),
        )


def _bucket_of(le: str) -> int:
    """Index in `REFIT_BUCKETS` (or len, for +Inf) of the smallest bound >= a stored `le`; a
    bound that is no longer in the list counts in the next one up, so totals stay right."""
    try:
        bound = float(le)
    except ValueError:
        return len(REFIT_BUCKETS)
    return next((i for i, b in enumerate(REFIT_BUCKETS) if bound <= b), len(REFIT_BUCKETS))


def _refit_metrics(tallies: Iterable[RefitTallyLike]) -> Iterator[Metric]:
    """Per model: attempts by outcome, failures, and the duration histogram (all tasks)."""
    refits, failures, duration = _refit_families()
    outcomes: dict[tuple[str, str], int] = {}
    buckets: dict[str, list[int]] = {}
    sums: dict[str, float] = {}
    for tally in tallies:
        outcome = REFIT_OUTCOME_OF_STATUS.get(tally.status)
        if outcome is None:
            continue
        model = tally.model
        outcomes[(model, outcome)] = outcomes.get((model, outcome), 0) + int(tally.count)
        per_bucket = buckets.setdefault(model, [0] * (len(REFIT_BUCKETS) + 1))
        per_bucket[_bucket_of(tally.le)] += int(tally.count)
        sums[model] = sums.get(model, 0.0) + float(tally.duration_sum)
    for model in sorted(buckets):
        for outcome in REFIT_OUTCOMES:
            count = outcomes.get((model, outcome), 0)
            # Every outcome from a model's first attempt on: a failure is then an increase of
            # an existing series, which `increase()` sees.
            refits.add_metric([model, outcome], count)
        failures.add_metric([model], outcomes.get((model, "failed"), 0))
        cumulative, running = [], 0
        for bound, count in zip((*REFIT_BUCKETS, math.inf), buckets[model], strict=True):
            running += count
            cumulative.append((floatToGoString(bound), running))
        duration.add_metric([model], cumulative, sums[model])
    yield refits
    yield failures
    yield duration


# --------------------------------------------------------------------------- build info


def _package_version() -> str:
    """The installed distribution's version (one place: the package metadata)."""
    try:
        return importlib.metadata.version("mllm-calib")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def build_info() -> dict[str, str]:
    """The labels of `calib_build_info`."""
    return {
        "version": _package_version(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


class BuildInfoCollector:
    """`calib_build_info{version, python, implementation} 1`: which build answers (join on
    it in PromQL; e.g. count replicas per version during a rollout). A collector, not a
    registry gauge, so multi-worker mode exports it once without a gauge aggregation mode."""

    def __init__(self) -> None:
        self._labels = build_info()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "calib_build_info",
            "Build of the answering gateway: package version and Python (value 1).",
            labels=list(self._labels),
        )
        family.add_metric(list(self._labels.values()), 1.0)
        yield family


BUILD_INFO = BuildInfoCollector()


# --------------------------------------------------------------------------- exposition

_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def exported_series_names() -> frozenset[str]:
    """Every series name this service can export under ``calib_`` (what PromQL may select):
    ``…_total`` for counters, ``…_bucket/_sum/_count`` for histograms, the name for gauges.

    Derived from the declared metrics and the collector's families, not from a hand-kept list.
    """
    families = [
        *REGISTRY.collect(),
        *CalibrationCollector(list).describe(),
        *BUILD_INFO.collect(),
    ]
    names = set()
    for family in families:
        if family.name.startswith("calib_"):
            names.update(family.name + suffix for suffix in _SERIES_SUFFIXES[family.type])
    return frozenset(names)


class _Union:
    """Several collectors seen as one (what `generate_latest` needs: a `collect()`)."""

    def __init__(self, collectors: Sequence[Any]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


def render_metrics(
    *collectors: Any,
    accept: str | None = None,
    multiprocess_dir: str | os.PathLike[str] | None = None,
) -> tuple[bytes, str]:
    """The exposition for one scrape: request-path metrics plus `collectors` (e.g. a
    `CalibrationCollector`), encoded per the scraper's ``Accept`` header (OpenMetrics when
    Prometheus asks for it, else text format 0.0.4). Returns ``(body, content_type)``.

    Request-path metrics come from the multiprocess files when `multiprocess_dir` is given or this
    process runs in multiprocess mode, else from `REGISTRY`.
    """
    directory = multiprocess_dir if multiprocess_dir is not None else MULTIPROCESS_DIR
    base: Any
    if directory is not None:
        base = MultiProcessCollector(None, path=os.fspath(directory))
    else:
        base = REGISTRY
    union = _Union([base, BUILD_INFO, *collectors])
    encoder, content_type = choose_encoder(accept or "")
    return encoder(union), content_type


def prepare_multiprocess_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` empty, for a fresh multi-worker start (call before starting workers).

    Files left by an earlier run would otherwise be summed into this run's counters.
    """
    directory = Path(path)
    if directory.exists():
        for entry in directory.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    return directory
