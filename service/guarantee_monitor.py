"""The guarantee monitor on `/metrics`: do the active profile's guarantees hold on live labels?

A refit certifies two things on its held-out labels: the abstain threshold's selective risk is at
most ``target_risk`` (Learn-Then-Test, with probability ``1 - delta``), and the prediction sets
cover the true option with probability at least ``set_coverage`` (split conformal). This module
checks both on the labels that arrive **after** the profile was activated, for predictions that
profile served (`Store.guarantee_rows`): computed from the store at scrape time, so every replica
and every worker process reports the same numbers, cached ``cache_seconds`` so a scrape stays
cheap.

Per (model, task) with an active profile, ``kind`` ``selective_risk`` and ``set_coverage``:

* ``calib_realized_selective_risk`` — errors among the labeled answers the threshold keeps
  (calibrated confidence >= threshold); ``calib_realized_coverage`` — the fraction it keeps;
* ``calib_realized_set_coverage`` — the fraction of labeled predictions whose recorded set holds
  the true option;
* ``calib_realized_guarantee_labels{kind}`` — the labels behind each (answered ones for the risk);
* ``calib_guarantee_target{kind}`` — the promised risk / coverage;
* ``calib_guarantee_p_value{kind}`` and ``calib_guarantee_broken{kind}`` (0/1): a one-sided
  exact binomial test (``scipy.stats.binomtest``, ``alternative="greater"``) of "failures happen
  at most at the promised rate" — errors among answers vs ``target_risk``, set misses vs
  ``1 - coverage`` — broken when ``p < alpha`` (0.01).

Sets may be asked for at different coverages per request; the test then uses the mean promised
miss rate. Misses are independent Bernoulli with rates at most ``1 - coverage_i``, and for such
a sum the binomial with the mean rate has the heavier upper tail beyond its mean plus one
(Hoeffding 1956), so the p-value stays valid (conservative). A set whose truth is unknown (a
wrong answer known only as wrong, on more than two options) counts only when it is decided: a
set of just the wrong answer misses; a set of every option covers; anything else is left out.

A threshold chosen by the ``coverage`` method certifies no risk: its realized risk is exported,
its ``broken`` gauge is not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from service.services import per_app
from service.store import Store

__all__ = [
    "GUARANTEE_METRIC_NAMES",
    "GuaranteeCollector",
    "GuaranteeState",
    "binomial_p_value",
    "guarantee_collector_for",
    "make_guarantee_source",
    "selective_risk_state",
    "set_coverage_state",
]

logger = logging.getLogger(__name__)

ALPHA = 0.01  # the test's level: "broken" when the p-value is below it
KINDS = ("selective_risk", "set_coverage")

_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "calib_realized_selective_risk": (
        "Error rate among labeled answers kept by the active threshold, labels since activation.",
        ("model", "task"),
    ),
    "calib_realized_coverage": (
        "Fraction of labeled predictions the active threshold answers, labels since activation.",
        ("model", "task"),
    ),
    "calib_realized_set_coverage": (
        "Fraction of labeled prediction sets holding the true option, labels since activation.",
        ("model", "task"),
    ),
    "calib_realized_guarantee_labels": (
        "Labels behind a realized guarantee gauge (answered labels for the risk), by kind.",
        ("model", "task", "kind"),
    ),
    "calib_guarantee_target": (
        "The promised value: target selective risk, or mean target set coverage, by kind.",
        ("model", "task", "kind"),
    ),
    "calib_guarantee_p_value": (
        "One-sided exact binomial p-value of 'failures at most at the promised rate', by kind.",
        ("model", "task", "kind"),
    ),
    "calib_guarantee_broken": (
        "1 if the binomial test rejects the guarantee at level 0.01, else 0, by kind.",
        ("model", "task", "kind"),
    ),
}

#: Names of the gauges `GuaranteeCollector` exports.
GUARANTEE_METRIC_NAMES = tuple(_GAUGES)


@dataclass(frozen=True)
class GuaranteeState:
    """One guarantee of one (model, task), as realized on live labels."""

    model: str
    task: str
    kind: str  # "selective_risk" | "set_coverage"
    realized: float | None  # risk among answers, or set coverage; None without labels
    labels: int  # the test's n
    target: float  # promised risk, or (mean) promised coverage
    failures: int = 0  # errors among answers, or set misses
    p_value: float | None = None  # None: nothing tested (no labels, or nothing certified)
    realized_coverage: float | None = None  # selective_risk: fraction of labels answered

    @property
    def broken(self) -> bool | None:
        return None if self.p_value is None else self.p_value < ALPHA


def binomial_p_value(failures: int, n: int, rate: float) -> float:
    """P(Bin(n, rate) >= failures): small when failures are too many for the promised rate."""
    from scipy.stats import binomtest  # lazily: scipy.stats is heavy to import in the gateway

    if n <= 0:
        return 1.0
    return float(binomtest(int(failures), int(n), float(rate), alternative="greater").pvalue)


def selective_risk_state(
    model: str,
    task: str,
    confidences: Iterable[float | None],
    correct: Iterable[bool],
    threshold: float,
    target_risk: float,
    *,
    certified: bool,
) -> GuaranteeState:
    """The realized risk of `threshold` on labeled predictions (None confidences: unscored)."""
    n_labels = answered = errors = 0
    for conf, ok in zip(confidences, correct, strict=True):
        if conf is None:
            continue
        n_labels += 1
        if conf >= threshold:
            answered += 1
            errors += 0 if ok else 1
    risk = errors / answered if answered else None
    p_value = binomial_p_value(errors, answered, target_risk) if certified and answered else None
    return GuaranteeState(
        model,
        task,
        "selective_risk",
        risk,
        answered,
        target_risk,
        errors,
        p_value,
        realized_coverage=answered / n_labels if n_labels else None,
    )


def _covered(features: dict[str, Any], correct: bool, true_index: int | None) -> bool | None:
    """Whether a recorded set held the truth; None when no set or not decidable."""
    indices = features.get("set_indices")
    if not isinstance(indices, list) or not indices:
        return None
    members = {int(i) for i in indices if isinstance(i, int | float) and not isinstance(i, bool)}
    if true_index is not None:
        return int(true_index) in members
    chosen = features.get("answer_index")
    n_options = len(features.get("options") or ())
    if correct and isinstance(chosen, int):
        return chosen in members
    if n_options and len(members) >= n_options:
        return True
    if not correct and isinstance(chosen, int) and members == {chosen}:
        return False
    return None


def set_coverage_state(
    model: str, task: str, rows: Iterable[tuple[dict[str, Any], bool, int | None]]
) -> GuaranteeState | None:
    """The realized coverage of recorded prediction sets; None when no row has a set."""
    n = misses = 0
    promised = 0.0
    for features, correct, true_index in rows:
        covered = _covered(features, correct, true_index)
        target = features.get("set_coverage")
        if covered is None or not isinstance(target, int | float):
            continue
        n += 1
        misses += 0 if covered else 1
        promised += float(target)
    if n == 0:
        return None
    target = promised / n
    p_value = binomial_p_value(misses, n, 1.0 - target)
    return GuaranteeState(model, task, "set_coverage", 1.0 - misses / n, n, target, misses, p_value)


#: A callable returning the guarantee states of every (model, task) with an active profile.
GuaranteeSource = Callable[[], Iterable[GuaranteeState]]


def make_guarantee_source(store: Store, *, limit: int = 100_000) -> GuaranteeSource:
    """The gateway's source: per active profile, its labels since activation (newest `limit`)."""

    def source() -> list[GuaranteeState]:
        states: list[GuaranteeState] = []
        for model, task in store.profile_models():
            active = store.active_version(model, task)
            if active is None:
                continue
            profile = active.profile
            rows = store.guarantee_rows(
                model, task, active.version, since=active.activated_at, limit=limit
            )
            choice = profile.threshold_choice or {}
            target_risk = choice.get("target_risk")
            if profile.threshold is not None and isinstance(target_risk, int | float):
                states.append(
                    selective_risk_state(
                        model,
                        task,
                        [row.confidence for row in rows],
                        [row.correct for row in rows],
                        float(profile.threshold),
                        float(target_risk),
                        certified=bool(choice.get("guaranteed")),
                    )
                )
            sets = set_coverage_state(
                model, task, ((row.features, row.correct, row.true_index) for row in rows)
            )
            if sets is not None:
                states.append(sets)
        return states

    return source


class GuaranteeCollector:
    """The guarantee gauges, read from a `GuaranteeSource` at most once per `cache_seconds`
    (the last good states are served when the source fails)."""

    def __init__(
        self,
        source: GuaranteeSource,
        *,
        cache_seconds: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._states: list[GuaranteeState] = []
        self._fetched_at: float | None = None

    def invalidate(self) -> None:
        with self._lock:
            self._fetched_at = None

    def _current(self) -> list[GuaranteeState]:
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self.cache_seconds:
                try:
                    self._states = list(self.source())
                except Exception:
                    logger.exception("guarantee source failed; serving the last known state")
                self._fetched_at = now
            return self._states

    def describe(self) -> Iterator[Metric]:
        for name, (documentation, labels) in _GAUGES.items():
            yield GaugeMetricFamily(name, documentation, labels=list(labels))

    def collect(self) -> Iterator[Metric]:
        families = {
            name: GaugeMetricFamily(name, documentation, labels=list(labels))
            for name, (documentation, labels) in _GAUGES.items()
        }
        for state in self._current():
            key = [state.model, state.task]
            by_kind = [*key, state.kind]
            if state.realized is not None:
                name = (
                    "calib_realized_selective_risk"
                    if state.kind == "selective_risk"
                    else "calib_realized_set_coverage"
                )
                families[name].add_metric(key, state.realized)
            if state.realized_coverage is not None:
                families["calib_realized_coverage"].add_metric(key, state.realized_coverage)
            families["calib_realized_guarantee_labels"].add_metric(by_kind, state.labels)
            families["calib_guarantee_target"].add_metric(by_kind, state.target)
            if state.p_value is not None:
                families["calib_guarantee_p_value"].add_metric(by_kind, state.p_value)
                families["calib_guarantee_broken"].add_metric(by_kind, float(bool(state.broken)))
        yield from families.values()


def guarantee_collector_for(app: Any) -> GuaranteeCollector | None:
    """The app's collector: `services.guarantee_collector`, else one built once from
    ``app.state.store`` (None for an app without a store)."""
    return per_app(app, "guarantee_collector", lambda: _bare_collector(app.state))


def _bare_collector(state: Any) -> GuaranteeCollector | None:
    store = getattr(state, "store", None)
    if not isinstance(store, Store):
        return None
    return GuaranteeCollector(make_guarantee_source(store))
