"""Calibration health on `/metrics`, in one module (docs/metrics.md): the collector, the
source that feeds it from the store, and the one place that builds it for the app.

* `CalibrationCollector` — the calibration-health gauges and the refit counters/histogram,
  computed at scrape time from a `CalibrationSource` and a `RefitSource` (cached a few seconds).
* `make_calibration_source(store)` — the `CalibrationSource` of the gateway. Per (model, task)
  with an active profile it reports:

  * the active profile and the metrics stored with its version (held-out ECE, Brier, NLL, ...);
  * the mean raw and calibrated confidence of the newest `recent` predictions *served by that
    version* (the label-free estimated accuracy; none right after an activation);
  * PSI of those calibrated confidences against the fit window's confidence quantiles
    (`metrics["reference_confidences"]`, written by `calibrators.refit.refit_profile`; 101
    quantiles are an equal-mass sample of the fit window, which is what PSI's quantile bins use),
    once at least `min_psi_sample` recent predictions exist;
  * when the last refit that fitted a challenger (activated or rejected) finished — from the
    audit log, so refits by another replica or by `calib refit` count.

  The refit counters, the refit-duration histogram and the last-failure time come from the
  store's refit tallies (`Store.refit_tallies`, the `refit_source` of the collector), for the
  same reason: on Kubernetes the refits run in a CronJob, a process nobody scrapes.
* `collector_for(app)` — the app's collector: the one in `Services`, or (an app without them)
  ready-made on `app.state`, or built once from the source.

The collector runs in the `/metrics` route's worker thread: synchronous store reads are fine.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import fmean
from typing import Any, Protocol, runtime_checkable

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from calibrators import Profile, population_stability_index
from service.metrics import REFIT_BUCKETS, REFIT_OUTCOME_OF_STATUS, REFIT_OUTCOMES, STAGES
from service.refit.job import FITTED_STATUSES
from service.services import per_app
from service.store import Store

__all__ = [
    "HEALTH_METRIC_NAMES",
    "CalibrationCollector",
    "CalibrationSource",
    "CalibrationState",
    "RefitSource",
    "RefitTallyLike",
    "collector_for",
    "make_calibration_source",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationState:
    """Everything the metrics need to know about one (model, task), as of now.

    Built by the store side (see docs/metrics.md, "Calibration source"): the active profile, the
    metrics stored with its version, and statistics of recent traffic.
    """

    model: str
    task: str
    #: The active profile (None: no profile yet).
    profile: Profile | None = None
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

    # read-only, so a frozen record with a narrower `last_finished_at` fits
    @property
    def model(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def le(self) -> str: ...
    @property
    def count(self) -> int: ...
    @property
    def duration_sum(self) -> float: ...
    @property
    def last_finished_at(self) -> datetime | float: ...


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


def _temperature(profile: Profile) -> float | None:
    calibrator = profile.calibrator
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
        self.source = profile_source
        self._refit_source = refit_source
        self.cache_seconds = cache_seconds  # settable: read at every scrape
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
            if self._fetched_at is None or now - self._fetched_at >= self.cache_seconds:
                up = 1.0
                try:
                    self._states = list(self.source())
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
        stored = profile.metrics if profile is not None else None
        metrics: Mapping[str, Any] = state.metrics or stored or {}
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
        choice = profile.threshold_choice if profile is not None else None
        choice = choice if isinstance(choice, Mapping) else {}
        for name in ("coverage", "selective_risk"):
            value = _lookup(metrics, name)
            add(f"calib_{name}", key, value if value is not None else _lookup(choice, name))
        if profile is not None:
            add("calib_temperature", key, _temperature(profile))
            add("calib_threshold", key, _number(profile.threshold))
            add("calib_profile_version", key, _number(profile.version))
        labels = _lookup(metrics, "labels")
        if labels is None and profile is not None:
            labels = _number(profile.n_labels)
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


def make_calibration_source(
    store: Store, *, recent: int = 2000, min_psi_sample: int = 100
) -> Callable[[], list[CalibrationState]]:
    def calibration_source() -> list[CalibrationState]:
        states = []
        for model, task in store.profile_models():
            active = store.active_version(model, task)
            if active is None:
                continue
            profile = active.profile
            raw, calibrated = store.recent_confidences(
                model, task, limit=recent, profile_version=active.version, mode=profile.mode
            )
            metrics = active.metrics or {}
            reference = metrics.get("reference_confidences") if isinstance(metrics, dict) else None
            psi = None
            if reference and len(calibrated) >= min_psi_sample:
                psi = population_stability_index(reference, calibrated)
            last = store.last_refit(model, task, statuses=FITTED_STATUSES)
            states.append(
                CalibrationState(
                    model,
                    task,
                    profile=profile,
                    metrics=active.metrics,
                    recent_mean_raw_confidence=fmean(raw) if raw else None,
                    recent_mean_calibrated_confidence=fmean(calibrated) if calibrated else None,
                    confidence_psi=psi,
                    last_refit_success_at=last.finished_at if last is not None else None,
                )
            )
        return states

    return calibration_source


def collector_for(app: Any) -> CalibrationCollector | None:
    """The app's collector (docs/metrics.md): `services.calibration_collector`, built in the
    lifespan. An app without `Services` keeps ``calibration_collector`` on `app.state`: ready
    made if set, else built once from ``calibration_source`` (and ``refit_source``, cached
    ``metrics_cache_seconds``); None without a source."""
    return per_app(app, "calibration_collector", lambda: _bare_collector(app.state))


def _bare_collector(state: Any) -> CalibrationCollector | None:
    source = getattr(state, "calibration_source", None)
    if source is None:
        return None
    return CalibrationCollector(
        source,
        refit_source=getattr(state, "refit_source", None),
        cache_seconds=float(getattr(state, "metrics_cache_seconds", 5.0)),
    )
