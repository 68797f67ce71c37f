"""Every Prometheus metric the gateway exports, declared once, here (docs/metrics.md).

Two kinds of metrics, with two ways of being correct when uvicorn runs several workers:

* **Request-path events** (requests, latency, upstream errors, confidences, abstentions,
  predictions, feedback) are counters and histograms updated by the `observe_*` functions
  below. With one worker they live in this module's `REGISTRY`. With several workers the serve
  command sets ``PROMETHEUS_MULTIPROC_DIR`` *before* any worker imports prometheus-client, every
  worker then writes its values to memory-mapped files in that directory, and `render_metrics`
  merges all files (`MultiProcessCollector`), so whichever worker answers the scrape reports the
  sum over all workers. The one gauge among them, `calib_visual_reliance_low_share`, is a share
  over each worker's own recent window; it is exported in ``mostrecent`` mode (the value the
  last probed answer set, in any worker: each worker's window is a sample of the same traffic).
* **Calibration health and refits** (ECE, Brier, NLL, accuracy, temperature, threshold,
  coverage, selective risk, profile version, labels, drift, last successful and failed refit, and
  the refit counters and duration histogram) are not process state at all: the collector in
  `service.calibration_health` reads the active profiles, their stored metrics, a few
  recent-traffic statistics and the store's refit tallies at scrape time (cached a few
  seconds). Every worker and every replica therefore reports the same values, straight from
  the store, including profiles activated and refits run by another replica or by
  ``calib refit`` running as a (Kubernetes) cron job.

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
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.core import (
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from calibrators import MODES

__all__ = [
    "ABSTAIN_REASONS",
    "FEEDBACK_OUTCOMES",
    "MULTIPROCESS_DIR",
    "PREDICTION_MODES",
    "REFIT_BUCKETS",
    "REFIT_OUTCOMES",
    "REGISTRY",
    "STAGES",
    "UNKNOWN_LABEL",
    "UPSTREAM_ERROR_KINDS",
    "BuildInfoCollector",
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
    "task_label",
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
VISUAL_PROBE_STATUSES = ("done", "skipped", "failed")
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


def task_label(task: str | None) -> str:
    """The `task` label value of `task` (bounded per process, like every `task` label)."""
    return _task_label(task)


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


# The labelled child of each (metric, label values), looked up once: `labels()` validates and
# takes a lock on every call, and the request path made seven such calls per request. Label
# values are bounded (above), so this cache is too; a race only looks a child up twice.
_CHILDREN: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, cached."""
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


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


VISUAL_RELIANCE = Histogram(
    "calib_visual_reliance",
    "Visual reliance of probed answers: how much the answer's probability depends on the image "
    "(0 = not at all, 1 = entirely; docs/api.md).",
    ["model", "task"],
    buckets=CONFIDENCE_BUCKETS,
    registry=REGISTRY,
)
VISUAL_RELIANCE_LOW_SHARE = Gauge(
    "calib_visual_reliance_low_share",
    "Share of the last probed answers (up to 500 per model and task, per worker) whose visual "
    "reliance is below the model's `visual_probe.low_reliance_floor`: answers that ignore the "
    "image.",
    ["model", "task"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
VISUAL_PROBES = Counter(
    "calib_visual_probes",
    "Visual-reliance probes by status: done, skipped (no data-URL image, ...), failed.",
    ["model", "status"],
    registry=REGISTRY,
)
#: Probed answers per (model, task) window of `calib_visual_reliance_low_share`.
LOW_RELIANCE_WINDOW = 500


class _LowShare:
    """The share of recent reliances below a floor, per label pair (a ring of booleans)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._rings: dict[tuple[str, str], tuple[list[bool], list[int]]] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple[str, str], low: bool) -> float:
        with self._lock:
            ring, state = self._rings.setdefault(key, ([], [0, 0]))  # state: next slot, lows
            if len(ring) < self._size:
                ring.append(low)
            else:
                slot = state[0]
                state[1] -= ring[slot]
                ring[slot] = low
                state[0] = (slot + 1) % self._size
            state[1] += low
            return state[1] / len(ring)


_low_share = _LowShare(LOW_RELIANCE_WINDOW)


def observe_visual_probe(
    model: str, task: str, status: str, reliance: float | None, floor: float
) -> None:
    """Record one probed answer: its status, and when measured its reliance (histogram) and
    whether it is below `floor` (the low-reliance share)."""
    model_label = _model_label(model)
    _child(VISUAL_PROBES, model_label, _choice(status, VISUAL_PROBE_STATUSES, "status")).inc()
    if reliance is None or not math.isfinite(reliance):
        return
    task_label = _task_label(task)
    _child(VISUAL_RELIANCE, model_label, task_label).observe(reliance)
    share = _low_share.add((model_label, task_label), reliance < floor)
    _child(VISUAL_RELIANCE_LOW_SHARE, model_label, task_label).set(share)


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
    _child(REQUESTS, model_label, endpoint, str(int(code))).inc()
    _child(REQUEST_DURATION, model_label, endpoint).observe(max(total_s, 0.0))
    if upstream_s is not None:
        upstream_s = max(upstream_s, 0.0)
        _child(UPSTREAM_DURATION, model_label, endpoint).observe(upstream_s)
        _child(GATEWAY_OVERHEAD, model_label, endpoint).observe(max(total_s - upstream_s, 0.0))


def observe_upstream_error(model: str | None, kind: str) -> None:
    """Count one failed upstream call (`kind` in `UPSTREAM_ERROR_KINDS`)."""
    _child(UPSTREAM_ERRORS, _model_label(model), _choice(kind, UPSTREAM_ERROR_KINDS, "kind")).inc()


def observe_confidence(model: str, task: str, raw: float | None, calibrated: float | None) -> None:
    """Record one response's raw and calibrated confidence (None = not available)."""
    model_label, task_label = _model_label(model), _task_label(task)
    if raw is not None and math.isfinite(raw):
        _child(CONFIDENCE, model_label, task_label, "raw").observe(raw)
    if calibrated is not None and math.isfinite(calibrated):
        _child(CONFIDENCE, model_label, task_label, "calibrated").observe(calibrated)


def observe_abstention(model: str, task: str, reason: str) -> None:
    """Count one abstention (`reason` in `ABSTAIN_REASONS`)."""
    _child(
        ABSTENTIONS,
        _model_label(model),
        _task_label(task),
        _choice(reason, ABSTAIN_REASONS, "reason"),
    ).inc()


def observe_prediction(model: str, task: str, mode: str) -> None:
    """Count one calibrated response (`mode` in `PREDICTION_MODES`)."""
    _child(
        PREDICTIONS, _model_label(model), _task_label(task), _choice(mode, PREDICTION_MODES, "mode")
    ).inc()


def observe_feedback(model: str | None, outcome: str, count: int = 1) -> None:
    """Count feedback items (`outcome` in `FEEDBACK_OUTCOMES`; model None for an unknown id)."""
    _child(FEEDBACK, _model_label(model), _choice(outcome, FEEDBACK_OUTCOMES, "outcome")).inc(count)


class WriterCounters(Protocol):
    """What `sync_prediction_writer` reads of a `PredictionWriter`; structural, so this module
    needs nothing from the store."""

    @property
    def dropped(self) -> int: ...

    @property
    def failed_batches(self) -> int: ...


# Last seen (dropped, failed_batches) per writer. Weak keys: a new writer never inherits the
# counts of a collected one; objects that cannot be weakly referenced are kept alive instead.
_writer_seen: weakref.WeakKeyDictionary[WriterCounters, tuple[int, int]] = (
    weakref.WeakKeyDictionary()
)
_writer_seen_strong: dict[int, tuple[WriterCounters, tuple[int, int]]] = {}
_writer_lock = threading.Lock()


def sync_prediction_writer(writer: WriterCounters) -> None:
    """Bring `calib_predictions_dropped_total` and `calib_prediction_write_failures_total` up to
    date with a `PredictionWriter`'s own counters (`dropped`, `failed_batches`).

    Idempotent: only the increase since the last call for this writer is added, so it may be
    called from the writer's flush loop and at scrape time alike.
    """
    dropped, failed = writer.dropped, writer.failed_batches
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
    from service.calibration_health import CalibrationCollector  # it imports this module
    from service.guarantee_monitor import GuaranteeCollector
    from service.shift.collector import ShiftCollector

    families = [
        *REGISTRY.collect(),
        *CalibrationCollector(list).describe(),
        *ShiftCollector.describe(),
        *GuaranteeCollector(list).describe(),
        *BUILD_INFO.collect(),
    ]
    names: set[str] = set()
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
