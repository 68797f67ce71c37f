"""Calibration and selective-prediction metrics on (confidence, correct) pairs.

``conf`` is the probability the answer is right, ``correct`` is 0/1. All functions are vectorized
(ECE on 1M items takes milliseconds) and return plain Python floats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "ReliabilityBin",
    "aurc",
    "auroc",
    "brier_score",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
    "risk_coverage_curve",
    "selective_risk_coverage",
]

Strategy = Literal["uniform", "quantile"]


def _inputs(conf: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(conf, dtype=float).reshape(-1)
    y = np.asarray(correct, dtype=float).reshape(-1)
    if c.shape != y.shape:
        raise ValueError(f"conf and correct differ in length: {c.size} != {y.size}")
    if np.isnan(c).any():
        raise ValueError("conf contains NaN")
    return c, y


def _bin_edges(conf: np.ndarray, n_bins: int, strategy: Strategy) -> np.ndarray:
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.asarray(np.quantile(conf, np.linspace(0.0, 1.0, n_bins + 1)))
    raise ValueError(f"unknown strategy {strategy!r}; use 'uniform' or 'quantile'")


def _bin_ids(conf: np.ndarray, edges: np.ndarray, strategy: Strategy) -> np.ndarray:
    n_bins = edges.size - 1
    if strategy == "uniform":
        # Exactly min(int(conf * n_bins), n_bins - 1): a bin is [i/n, (i+1)/n), the last closed.
        return np.asarray(
            np.minimum((np.clip(conf, 0.0, 1.0) * n_bins).astype(np.int64), n_bins - 1)
        )
    # Equal-mass bins, assigned like sklearn's calibration_curve(strategy="quantile").
    return np.searchsorted(edges[1:-1], conf)


def _binned(
    conf: np.ndarray, correct: np.ndarray, n_bins: int, strategy: Strategy
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    edges = _bin_edges(conf, n_bins, strategy)
    ids = _bin_ids(conf, edges, strategy)
    count = np.bincount(ids, minlength=n_bins).astype(float)
    sum_conf = np.bincount(ids, weights=conf, minlength=n_bins)
    sum_correct = np.bincount(ids, weights=correct, minlength=n_bins)
    return edges, count, sum_conf, sum_correct


def expected_calibration_error(
    conf: Any, correct: Any, n_bins: int = 10, strategy: Strategy = "uniform"
) -> float:
    """Count-weighted mean |accuracy - mean confidence| over bins (nan for no items)."""
    c, y = _inputs(conf, correct)
    if c.size == 0:
        return float("nan")
    _, _, sum_conf, sum_correct = _binned(c, y, n_bins, strategy)
    return float(np.abs(sum_correct - sum_conf).sum() / c.size)


def maximum_calibration_error(
    conf: Any, correct: Any, n_bins: int = 10, strategy: Strategy = "uniform"
) -> float:
    """Largest |accuracy - mean confidence| over non-empty bins (nan for no items)."""
    c, y = _inputs(conf, correct)
    if c.size == 0:
        return float("nan")
    _, count, sum_conf, sum_correct = _binned(c, y, n_bins, strategy)
    full = count > 0
    return float(np.max(np.abs(sum_correct[full] - sum_conf[full]) / count[full]))


def brier_score(conf: Any, correct: Any) -> float:
    """Mean squared error of the confidence as a probability of being correct."""
    c, y = _inputs(conf, correct)
    return float(np.mean((c - y) ** 2)) if c.size else float("nan")


def negative_log_likelihood(conf: Any, correct: Any, eps: float = 1e-12) -> float:
    """Binary log-loss of the confidences, clipped to ``[eps, 1 - eps]`` to stay finite."""
    c, y = _inputs(conf, correct)
    if c.size == 0:
        return float("nan")
    p = np.clip(c, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def auroc(conf: Any, correct: Any) -> float:
    """P(conf of a correct answer > conf of a wrong one), ties counting one half.

    Equal to sklearn's ``roc_auc_score(correct, conf)``; nan when only one class is present.
    """
    c, y = _inputs(conf, correct)
    positive = y > 0.5
    n_pos = int(positive.sum())
    n_neg = c.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # lazily: scipy.stats costs ~70 MB at import

    ranks = rankdata(c)  # average ranks handle ties
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def risk_coverage_curve(conf: Any, correct: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage and selective risk when answering iff ``conf >= threshold``.

    One point per distinct confidence, thresholds in decreasing order (coverage increasing).
    """
    c, y = _inputs(conf, correct)
    if c.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-c, kind="stable")
    c_sorted = c[order]
    errors = np.cumsum(1.0 - y[order])
    # The last index of each run of equal confidences: everything tied is answered together.
    last = np.flatnonzero(np.append(c_sorted[1:] != c_sorted[:-1], True))
    answered = last + 1.0
    return answered / c.size, errors[last] / answered, c_sorted[last]


def aurc(conf: Any, correct: Any) -> float:
    """Area under the risk-coverage curve (lower is better), as in Geifman et al. (2019).

    The mean over items, ranked by decreasing confidence, of the selective risk at that item's
    coverage. Tied confidences are answered together, so all of them get the risk of the tie
    group (without ties this is exactly ``mean_k errors(top k) / k``).
    """
    c, y = _inputs(conf, correct)
    if c.size == 0:
        return float("nan")
    coverage, risk, _ = risk_coverage_curve(c, y)
    widths = np.diff(coverage, prepend=0.0)
    return float((risk * widths).sum())


def selective_risk_coverage(conf: Any, correct: Any, threshold: float) -> tuple[float, float]:
    """(coverage, risk) of answering iff ``conf >= threshold``; risk is 0.0 when nothing is
    answered (no answers, no errors)."""
    c, y = _inputs(conf, correct)
    if c.size == 0:
        return 0.0, 0.0
    answered = c >= threshold
    n = int(answered.sum())
    if n == 0:
        return 0.0, 0.0
    return n / c.size, float((1.0 - y[answered]).sum() / n)


@dataclass(frozen=True)
class ReliabilityBin:
    """One bar of a reliability diagram; means are None for an empty bin."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reliability_bins(
    conf: Any, correct: Any, n_bins: int = 10, strategy: Strategy = "uniform"
) -> list[ReliabilityBin]:
    """Per-bin count, mean confidence and accuracy (same binning as the ECE)."""
    c, y = _inputs(conf, correct)
    if strategy == "quantile" and c.size == 0:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        count = sum_conf = sum_correct = np.zeros(n_bins)
    else:
        edges, count, sum_conf, sum_correct = _binned(c, y, n_bins, strategy)
    bins = []
    for i in range(n_bins):
        n = int(count[i])
        bins.append(
            ReliabilityBin(
                lower=float(edges[i]),
                upper=float(edges[i + 1]),
                count=n,
                mean_confidence=float(sum_conf[i] / n) if n else None,
                accuracy=float(sum_correct[i] / n) if n else None,
            )
        )
    return bins
