"""Every Prometheus metric the gateway exports, declared once, here (DESIGN §5, docs/metrics.md).

Two kinds of metrics, with two ways of being correct when uvicorn runs several workers:

* **Request-path events** (requests, latency, upstream errors, confidences, abstentions,
  predictions, feedback, refits) are counters and histograms updated by the `observe_*` functions
  below. With one worker they live in this module's `REGISTRY`. With several workers the serve
  command sets ``PROMETHEUS_MULTIPROC_DIR`` *before* any worker imports prometheus-client, every
  worker then writes its values to memory-mapped files in that directory, and `render_metrics`
  merges all files (`MultiProcessCollector`), so whichever worker answers the scrape reports the
  sum over all workers. None of these metrics is a gauge, so no multiprocess gauge mode is needed.
* **Calibration health** (ECE, Brier, NLL, accuracy, temperature, threshold, coverage, selective
  risk, profile version, labels, drift, last successful refit) is not process state at all:
  `CalibrationCollector` reads the active profiles, their stored metrics and a few recent-traffic
  statistics from a `CalibrationSource` at scrape time (cached a few seconds). Every worker and
  every replica therefore reports the same values, straight from the store, including profiles
  activated by another replica or by ``calib refit`` running as a cron job.

This module holds no application wiring: the `/metrics` route (`service.routes.metrics`) decides
where the source and the prediction writer come from.
"""

from __future__ import annotations

import logging
import math
import os
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
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = [
    "ABSTAIN_REASONS",
    "FEEDBACK_OUTCOMES",
    "HEALTH_METRIC_NAMES",
    "MULTIPROCESS_DIR",
    "PREDICTION_MODES",
    "REFIT_OUTCOMES",
    "REGISTRY",
    "STAGES",
    "UNKNOWN_LABEL",
    "UPSTREAM_ERROR_KINDS",
    "CalibrationCollector",
    "CalibrationSource",
    "CalibrationState",
    "ProfileLike",
    "exported_series_names",
    "observe_abstention",
    "observe_confidence",
    "observe_feedback",
    "observe_prediction",
    "observe_refit",
    "observe_request",
    "observe_upstream_error",
    "prepare_multiprocess_dir",
    "render_metrics",
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
PREDICTION_MODES = ("options", "sequence")
FEEDBACK_OUTCOMES = ("correct", "incorrect", "unchanged", "rejected")
REFIT_OUTCOMES = ("activated", "rejected", "failed")

#: Label value for a model or task that is not known (e.g. feedback for an unknown id).
UNKNOWN_LABEL = "_unknown"
#: Label value once more than `MAX_LABEL_VALUES` distinct models (or tasks) have been seen.
OVERFLOW_LABEL = "_other"
#: Bound on distinct `model` and `task` values per process: both come from request bodies.
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


_model_label = _BoundedLabel(MAX_LABEL_VALUES)
_task_label = _BoundedLabel(MAX_LABEL_VALUES)


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
REFITS = Counter(
    "calib_refits",
    "Refit attempts run by this service, by outcome (activated, rejected, failed).",
    ["model", "outcome"],
    registry=REGISTRY,
)
REFIT_FAILURES = Counter(
    "calib_refit_failures",
    "Refit attempts that failed with an error (not a rejected challenger).",
    ["model"],
    registry=REGISTRY,
)
REFIT_DURATION = Histogram(
    "calib_refit_duration_seconds",
    "Wall time of a refit attempt (load labels, fit, evaluate, store), in seconds.",
    ["model"],
    buckets=REFIT_BUCKETS,
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


def observe_refit(model: str, outcome: str, duration_s: float) -> None:
    """Record one refit attempt of `model` that ran in this process.

    The time of the last *successful* refit is not recorded here: it is store truth, exported by
    `CalibrationCollector` from `CalibrationState.last_refit_success_at`, so that refits done by
    another replica or by ``calib refit`` (cron) count too.
    """
    outcome = _choice(outcome, REFIT_OUTCOMES, "outcome")
    model_label = _model_label(model)
    REFITS.labels(model_label, outcome).inc()
    if outcome == "failed":
        REFIT_FAILURES.labels(model_label).inc()
    REFIT_DURATION.labels(model_label).observe(max(duration_s, 0.0))


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
    "calib_calibration_source_up": (
        "1 if the last read of the calibration state from the store succeeded, else 0.",
        (),
    ),
}

#: Names of the gauges `CalibrationCollector` exports.
HEALTH_METRIC_NAMES = tuple(_HEALTH)


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
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = profile_source
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._states: list[CalibrationState] = []
        self._fetched_at: float | None = None
        self._up = 1.0

    def invalidate(self) -> None:
        """Forget the cached state (e.g. right after this process activated a profile)."""
        with self._lock:
            self._fetched_at = None

    def _current(self) -> tuple[list[CalibrationState], float]:
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._cache_seconds:
                try:
                    self._states = list(self._source())
                    self._up = 1.0
                except Exception:
                    logger.exception("calibration source failed; serving the last known state")
                    self._up = 0.0
                self._fetched_at = now
            return self._states, self._up

    def describe(self) -> Iterator[Metric]:
        """The gauge families, without samples (no store access)."""
        for name, (documentation, labels) in _HEALTH.items():
            yield GaugeMetricFamily(name, documentation, labels=list(labels))

    def collect(self) -> Iterator[Metric]:
        states, up = self._current()
        families = {
            name: GaugeMetricFamily(name, documentation, labels=list(labels))
            for name, (documentation, labels) in _HEALTH.items()
        }

        def add(name: str, labels: Sequence[str], value: float | None) -> None:
            if value is not None:
                families[name].add_metric(list(labels), value)

        for state in states:
            self._add_state(state, add)
        families["calib_calibration_source_up"].add_metric([], up)
        yield from families.values()

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
    families = [*REGISTRY.collect(), *CalibrationCollector(list).describe()]
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
    union = _Union([base, *collectors])
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
