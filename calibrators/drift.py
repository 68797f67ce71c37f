"""Has the confidence distribution moved since the profile was fitted? (label-free gauges)

PSI uses quantile bins of the reference sample so every bin starts with equal mass; the KS
statistic is the largest gap between the two empirical CDFs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ks_statistic", "population_stability_index"]


def _sample(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def population_stability_index(
    reference: Any, current: Any, n_bins: int = 10, eps: float = 1e-4
) -> float:
    """``sum (q - p) * ln(q / p)`` over reference-quantile bins; 0 means no shift.

    Bin proportions are smoothed with ``eps`` so an empty bin gives a large, finite value.
    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
    """
    ref, cur = _sample(reference, "reference"), _sample(current, "current")
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, n_bins + 1))[1:-1])
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    p = (ref_counts + eps) / (ref.size + eps * ref_counts.size)
    q = (cur_counts + eps) / (cur.size + eps * cur_counts.size)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(reference: Any, current: Any) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (as ``scipy.stats.ks_2samp(...).statistic``)."""
    ref = np.sort(_sample(reference, "reference"))
    cur = np.sort(_sample(current, "current"))
    points = np.concatenate([ref, cur])
    cdf_ref = np.searchsorted(ref, points, side="right") / ref.size
    cdf_cur = np.searchsorted(cur, points, side="right") / cur.size
    return float(np.max(np.abs(cdf_ref - cdf_cur)))
