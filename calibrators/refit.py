"""Fit a new profile from labeled predictions and decide whether it beats the active one.

Pure: the service gathers the labeled predictions, calls :func:`refit_profile`, and stores what
comes back. The procedure (docs/architecture.md, "Refit loop"):

1. split the items deterministically by a hash of their id into a fit part and a held-out part, so
   a retry on the same data gives the same answer and a prediction never moves between parts;
2. fit every applicable calibrator on the fit part (temperature for options mode; Platt, and
   isotonic above ``isotonic_min_labels``, for sequence mode; in both modes a multi-feature
   logistic map per ``feature_sets`` entry whose signals the data carries) and keep the one with
   the lowest held-out NLL. When a logistic candidate competes in options mode, every candidate
   (and the champion) is judged on the binary NLL of the answer's confidence, the only
   probability a logistic map gives;
3. choose the abstain threshold on the held-out part with :func:`select_threshold` — the
   calibrator is fixed before these items are seen, which is what Learn-Then-Test needs (the only
   reuse is the pick among at most three calibrators by held-out NLL; see docs/refit.md);
4. options mode: fit the split-conformal score table of the prediction sets on the held-out part
   with the challenger's option probabilities (:mod:`calibrators.conformal`, LAC);
5. champion/challenger: the challenger is activated only with at least ``min_labels`` labels and a
   held-out NLL not worse than the active profile's on the same held-out items.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from .conformal import conformal_scores, fit_conformal
from .isotonic import IsotonicCalibrator
from .logistic import CONFIDENCE_LOGIT, FeatureLogistic, confidence_logit
from .metrics import (
    auroc,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
)
from .platt import PlattScaler
from .profile import Profile
from .temperature import TemperatureScaler
from .threshold import select_threshold
from .vocab import Method, Mode

__all__ = ["LabeledSet", "RefitPolicy", "RefitResult", "holdout_mask", "refit_profile"]

_REFERENCE_QUANTILES = 101  # confidence quantiles kept with a profile, the drift gauge's baseline


@dataclass(frozen=True)
class LabeledSet:
    """Labeled predictions of one model/task, as arrays.

    Options mode: ``option_logprobs`` is ``(n, k)`` padded with ``-inf``; ``labels[i]`` is the true
    option index or -1 when only correctness is known; ``chosen[i]`` is the answered option's index.
    Sequence mode: ``raw_confidence`` is ``exp(mean token logprob)``. Both: ``correct`` (0/1),
    and ``signals``: named per-item signals for multi-feature calibration (NaN = not measured).
    """

    ids: list[str]
    mode: Mode
    correct: np.ndarray
    option_logprobs: np.ndarray | None = None
    labels: np.ndarray | None = None
    chosen: np.ndarray | None = None
    raw_confidence: np.ndarray | None = None
    signals: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, mask: np.ndarray) -> LabeledSet:
        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[mask]

        return LabeledSet(
            ids=[item for item, keep in zip(self.ids, mask, strict=True) if keep],
            mode=self.mode,
            correct=self.correct[mask],
            option_logprobs=pick(self.option_logprobs),
            labels=pick(self.labels),
            chosen=pick(self.chosen),
            raw_confidence=pick(self.raw_confidence),
            signals={name: values[mask] for name, values in self.signals.items()},
        )


@dataclass(frozen=True)
class RefitPolicy:
    """Knobs of a refit; the service fills them from its settings."""

    min_labels: int = 50
    holdout_fraction: float = 0.3
    isotonic_min_labels: int = 1000
    threshold_method: Literal["ltt", "coverage"] = "ltt"
    target_risk: float = 0.1
    delta: float = 0.1
    target_coverage: float | None = None
    #: Multi-feature logistic candidates: each entry names its features (``confidence_logit``
    #: or a key of ``LabeledSet.signals``); one is fitted when the data carries every signal.
    feature_sets: tuple[tuple[str, ...], ...] = ()
    #: A signal counts as carried when at least this share of the items measured it.
    min_signal_share: float = 0.5


@dataclass(frozen=True)
class RefitResult:
    """A refit's outcome: the candidate profile, whether to activate it, and why."""

    candidate: Profile | None
    activate: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)


def holdout_mask(ids: list[str], fraction: float) -> np.ndarray:
    """True for the items that belong to the held-out part (stable per id across refits)."""
    buckets = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=4).digest()) for i in ids]
    return (np.asarray(buckets, dtype=np.float64) / 2**32) < fraction


_IDENTITY_SCALER = TemperatureScaler.from_dict({"temperature": 1.0})


def _raw_top_label(data: LabeledSet) -> np.ndarray:
    """The raw (T = 1) confidence of the answer each item gave."""
    if data.mode == "options":
        return _IDENTITY_SCALER.confidence(data.option_logprobs, data.chosen)
    return np.asarray(data.raw_confidence, dtype=np.float64)


def _feature_matrix(data: LabeledSet, names: tuple[str, ...]) -> np.ndarray:
    """Columns of ``names`` (NaN where a signal was not measured or is not carried at all)."""
    columns = []
    for name in names:
        if name == CONFIDENCE_LOGIT:
            columns.append(confidence_logit(_raw_top_label(data)))
        else:
            columns.append(data.signals.get(name, np.full(len(data), np.nan)))
    return np.column_stack(columns) if columns else np.empty((len(data), 0))


def _top_label_conf(calibrator: Any, data: LabeledSet) -> np.ndarray:
    """Confidence of the chosen option (options) or of the answer (sequence); None = identity."""
    if isinstance(calibrator, FeatureLogistic):
        return calibrator.predict_proba(_feature_matrix(data, calibrator.features_))
    if data.mode == "options":
        scaler = calibrator if calibrator is not None else _IDENTITY_SCALER
        return scaler.confidence(data.option_logprobs, data.chosen)
    raw = np.asarray(data.raw_confidence, dtype=np.float64)
    return raw if calibrator is None else calibrator.predict_proba(raw)


def _heldout_nll(calibrator: Any, data: LabeledSet, *, binary: bool = False) -> float:
    """The champion/challenger criterion: NLL of what the labels say, on the held-out items.

    Options mode uses the option labels where known (multiclass), unless ``binary``: then, as in
    sequence mode, the NLL of correctness under the answer's confidence.
    """
    if data.mode == "options" and not binary and not isinstance(calibrator, FeatureLogistic):
        scaler = calibrator if calibrator is not None else _IDENTITY_SCALER
        return scaler.nll(
            data.option_logprobs, data.labels, chosen=data.chosen, correct=data.correct
        )
    return negative_log_likelihood(_top_label_conf(calibrator, data), data.correct)


def _carried(data: LabeledSet, names: tuple[str, ...], share: float) -> bool:
    for name in names:
        if name == CONFIDENCE_LOGIT:
            continue
        values = data.signals.get(name)
        if values is None or np.count_nonzero(np.isfinite(values)) < share * max(len(data), 1):
            return False
    return True


def _fit_candidates(data: LabeledSet, policy: RefitPolicy) -> dict[str, Any]:
    """The challengers by name: a method, or ``logistic:<feature>+<feature>…``."""
    candidates: dict[str, Any]
    if data.mode == "options":
        scaler = TemperatureScaler().fit(
            data.option_logprobs, data.labels, chosen=data.chosen, correct=data.correct
        )
        candidates = {"temperature": scaler}
    else:
        candidates = {"platt": PlattScaler().fit(data.raw_confidence, data.correct)}
        if len(data) >= policy.isotonic_min_labels:
            candidates["isotonic"] = IsotonicCalibrator().fit(data.raw_confidence, data.correct)
    for names in policy.feature_sets:
        if names and _carried(data, names, policy.min_signal_share):
            model = FeatureLogistic(names).fit(_feature_matrix(data, names), data.correct)
            candidates["logistic:" + "+".join(names)] = model
    return candidates


def _item_losses(calibrator: Any, data: LabeledSet) -> np.ndarray:
    """Per-item binary log loss of the answer's confidence (what the NLL averages)."""
    p = np.clip(_top_label_conf(calibrator, data), 1e-12, 1.0 - 1e-12)
    return np.asarray(-(data.correct * np.log(p) + (1.0 - data.correct) * np.log1p(-p)))


def _select(
    candidates: dict[str, Any], scored: dict[str, float], data: LabeledSet
) -> tuple[str, dict[str, Any] | None]:
    """The candidate with the lowest held-out NLL, unless it is a logistic map that beats the
    best single-signal method (Platt, isotonic, temperature) by no more than one standard error
    of the paired per-item loss difference: then that simpler method.

    Why: with several logistic candidates, one of them beats the simpler map on a finite
    hold-out by chance about half the time even when its extra signals carry nothing (it nests
    Platt); the one-standard-error rule keeps the simpler model unless the gain is visible.
    Returns the name and, when the rule overrode the plain minimum, what it compared.
    """
    best = min(scored, key=scored.__getitem__)
    if not best.startswith("logistic:"):
        return best, None
    simple = [name for name in scored if not name.startswith("logistic:")]
    if not simple:
        return best, None
    base = min(simple, key=scored.__getitem__)
    diff = _item_losses(candidates[base], data) - _item_losses(candidates[best], data)
    if diff.size < 2 or not np.all(np.isfinite(diff)):
        return best, None
    se = float(diff.std(ddof=1) / math.sqrt(diff.size))
    if float(diff.mean()) > se:
        return best, None
    return base, {"rule": "one_se", "best_nll": best, "gain": float(diff.mean()), "se": se}


def _method_of(calibrator: Any) -> Method:
    kind: Method = calibrator.to_dict()["type"]
    return kind


def _quality(conf: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    return {
        "ece": expected_calibration_error(conf, correct),
        "brier": brier_score(conf, correct),
        "nll": negative_log_likelihood(conf, correct),
        "auroc": auroc(conf, correct),
        "mean_confidence": float(np.mean(conf)) if conf.size else math.nan,
    }


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN/inf by None so the metrics are valid JSON."""
    clean: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            clean[key] = _finite(value)
        elif isinstance(value, float) and not math.isfinite(value):
            clean[key] = None
        else:
            clean[key] = value
    return clean


def _conformal(challenger: Any, data: LabeledSet) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Options mode: the conformal table of the held-out items under the challenger's option
    probabilities, and what went into it (for the refit's metrics)."""
    if (
        data.mode != "options"
        or data.option_logprobs is None
        or not isinstance(challenger, TemperatureScaler)
    ):
        return None, {}
    probs = challenger.predict_proba(data.option_logprobs)
    scores = conformal_scores(probs, data.labels, data.chosen, data.correct)
    table = fit_conformal(scores)
    unknown = int(np.count_nonzero(np.asarray(data.labels) < 0))
    info = {
        "method": table.method,
        "n": table.n,
        "n_label_unknown": unknown,
        "quantile_90": table.quantile(0.9),
    }
    return table.to_dict(), info


def _active_calibrator(active: Profile, mode: str) -> Any:
    """The active profile's calibrator if it applies to this mode, else identity (None)."""
    fitted = active.fitted_calibrator
    if active.mode != mode:
        return None
    if mode == "options":
        return fitted if isinstance(fitted, TemperatureScaler | FeatureLogistic) else None
    return (
        fitted if isinstance(fitted, PlattScaler | IsotonicCalibrator | FeatureLogistic) else None
    )


def refit_profile(
    data: LabeledSet, active: Profile, policy: RefitPolicy, *, now: datetime | None = None
) -> RefitResult:
    """Fit a challenger on ``data`` and decide against ``active`` (see the module docstring)."""
    n = len(data)
    if n < policy.min_labels:
        return RefitResult(None, False, f"only {n} labels, need at least {policy.min_labels}")
    heldout = holdout_mask(data.ids, policy.holdout_fraction)
    fit_part, test_part = data.subset(~heldout), data.subset(heldout)
    if len(fit_part) < 2 or len(test_part) < 2:
        return RefitResult(None, False, f"{n} labels split into too few fit/held-out items")

    candidates = _fit_candidates(fit_part, policy)
    champion = _active_calibrator(active, data.mode)
    binary = data.mode == "options" and any(
        isinstance(cal, FeatureLogistic) for cal in [*candidates.values(), champion]
    )
    scored = {name: _heldout_nll(cal, test_part, binary=binary) for name, cal in candidates.items()}
    best, selection = _select(candidates, scored, test_part)
    challenger = candidates[best]
    method = _method_of(challenger)
    champion_nll = _heldout_nll(champion, test_part, binary=binary)

    raw_conf = _top_label_conf(None, test_part)
    cal_conf = _top_label_conf(challenger, test_part)
    choice = select_threshold(
        cal_conf,
        test_part.correct,
        target_risk=policy.target_risk,
        delta=policy.delta,
        method=policy.threshold_method,
        target_coverage=policy.target_coverage,
    )
    conformal, conformal_info = _conformal(challenger, test_part)
    metrics = _finite(
        {
            "raw": _quality(raw_conf, test_part.correct),
            "calibrated": _quality(cal_conf, test_part.correct),
            "accuracy": float(np.mean(test_part.correct)),
            "heldout_nll": {"challenger": scored[best], "champion": champion_nll, **scored},
            "nll_criterion": "binary" if binary else "labels",
            "chosen": best,
            **({"selection": selection} if selection else {}),
            "coverage": choice.coverage,
            "selective_risk": choice.risk,
            "n_fit": len(fit_part),
            "n_heldout": len(test_part),
            **({"conformal": conformal_info} if conformal_info else {}),
            "reference_confidences": np.quantile(
                _top_label_conf(challenger, data), np.linspace(0, 1, _REFERENCE_QUANTILES)
            ).tolist(),
        }
    )
    candidate = dataclasses.replace(
        active,
        version=active.version,  # the store assigns the next version when saving
        mode=data.mode,
        method=method,
        calibrator=challenger.to_dict(),
        threshold=choice.threshold,
        threshold_choice=choice.to_dict(),
        metrics=metrics,
        fitted_at=(now or datetime.now(UTC)).isoformat(),
        n_labels=n,
        notes=None,
        conformal=conformal,
    )
    kept = (
        f" ({selection['best_nll']} held-out NLL {scored[selection['best_nll']]:.4f} is not "
        f"better by more than one standard error, {selection['se']:.4f})"
        if selection
        else ""
    )
    if scored[best] <= champion_nll + 1e-12:
        reason = (
            f"{best} held-out NLL {scored[best]:.4f} <= active {champion_nll:.4f} "
            f"on {len(test_part)} held-out labels{kept}"
        )
        return RefitResult(candidate, True, reason, metrics)
    reason = (
        f"{best} held-out NLL {scored[best]:.4f} worse than active {champion_nll:.4f} "
        f"on {len(test_part)} held-out labels{kept}; active profile kept"
    )
    return RefitResult(candidate, False, reason, metrics)
