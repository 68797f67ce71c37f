"""Split-conformal prediction sets over the options (LAC: least ambiguous set-valued classifier).

Score of an item: ``s = 1 - p(true option)`` under the fitted (calibrated) option probabilities.
With the ``n`` calibration scores sorted, the quantile for a target coverage ``c`` is the
``ceil((n + 1) c)``-th smallest score ``q``; the set of a new item is every option with
``1 - p <= q``. On exchangeable data the set holds the true option with probability at least
``c`` (Vovk et al. 2005; Sadinle, Lei & Wasserman 2019: LAC gives the smallest expected set
size among sets with that coverage). ``ceil((n + 1) c) > n``: no finite quantile, every option.

Why LAC rather than APS: with a handful of options and one fitted temperature, LAC's sets are the
smallest for a given coverage and are deterministic; APS trades size for conditional adaptivity
and needs randomization to reach exact coverage (a set that changes on a repeat request).

Two choices keep the guarantee:

* items known only as "the chosen option was wrong" get the **largest** score any non-chosen
  option could give (``1 - min p``), an upper bound of their true score: the quantile can only
  grow, so coverage stays at least the target; a right answer is an option label;
* a set is never empty: the most probable option is always in it (a superset covers more).

A per-request coverage differs from the one fitted, so a profile keeps a :class:`ConformalTable`
(the sorted scores, or for large calibration sets an evenly spaced table of their order
statistics) from which the quantile for any coverage is read: for ``n <= max_points`` it is
exact; above, the next tabled order statistic at or above the needed rank (at most ``n /
max_points`` ranks higher: a slightly larger set, never a smaller one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ConformalTable", "conformal_scores", "fit_conformal", "prediction_set"]

_DEFAULT_POINTS = 1000
_TOLERANCE = 1e-9


def conformal_scores(
    probs: Any, labels: Any, chosen: Any = None, correct: Any = None
) -> np.ndarray:
    """LAC scores ``1 - p(true option)`` of labeled items (``probs``: ``(n, k)``, rows sum to 1,
    padded options at 0).

    ``labels[i] = -1`` (true option unknown): a right answer (``correct``) scores its chosen
    option; a wrong one the largest score among the other real (``p > 0``) options, an upper
    bound of its unknown true score.
    """
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D (n, k), got shape {p.shape}")
    n = p.shape[0]
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.shape[0] != n:
        raise ValueError("labels must have one entry per row of probs")
    rows = np.arange(n)
    known = y >= 0
    scores = np.empty(n)
    scores[known] = 1.0 - p[rows[known], y[known]]
    unknown = ~known
    if unknown.any():
        if chosen is None or correct is None:
            raise ValueError("rows with label -1 need chosen= and correct=")
        c = np.asarray(chosen, dtype=np.int64).reshape(-1)
        ok = np.asarray(correct, dtype=float).reshape(-1) == 1.0
        right = unknown & ok
        scores[right] = 1.0 - p[rows[right], c[right]]
        wrong = np.flatnonzero(unknown & ~ok)
        if wrong.size:
            others = p[wrong].copy()
            others[np.arange(wrong.size), c[wrong]] = np.inf
            others[others <= 0.0] = np.inf  # padding / impossible options are not candidates
            lowest = others.min(axis=1)
            # A wrong answer with no other real option: nothing could have covered it.
            scores[wrong] = np.where(np.isfinite(lowest), 1.0 - lowest, 1.0)
    return scores


@dataclass(frozen=True)
class ConformalTable:
    """What a profile keeps to give the conformal quantile for any coverage.

    ``scores[j]`` is the order statistic of rank ``ranks(j)`` (1-based) of the ``n`` calibration
    scores; ``ranks`` are ``ceil((j + 1) n / m)`` for ``m = len(scores)`` (all ranks when
    ``m == n``).
    """

    n: int
    scores: tuple[float, ...]
    method: str = "lac"

    def __post_init__(self) -> None:
        if self.method != "lac":
            raise ValueError(f"unknown conformal method {self.method!r}; only 'lac'")
        if self.n < 1 or not 1 <= len(self.scores) <= self.n:
            raise ValueError("a conformal table needs 1 <= len(scores) <= n")

    def rank_of(self, j: int) -> int:
        """The 1-based rank of ``scores[j]`` among the ``n`` calibration scores."""
        return math.ceil((j + 1) * self.n / len(self.scores))

    def quantile(self, coverage: float) -> float:
        """The score threshold for ``coverage`` in (0, 1); ``inf`` when ``n`` is too small for it
        (the set is then every option)."""
        if not 0.0 < coverage < 1.0:
            raise ValueError("coverage must be in (0, 1)")
        needed = math.ceil((self.n + 1) * coverage - 1e-12)
        if needed > self.n:
            return math.inf
        m = len(self.scores)
        # Smallest j with ceil((j + 1) n / m) >= needed.
        j = max(0, math.ceil(needed * m / self.n) - 1)
        while j > 0 and self.rank_of(j - 1) >= needed:
            j -= 1
        while self.rank_of(j) < needed:
            j += 1
        return float(self.scores[j])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "n": self.n, "scores": list(self.scores)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformalTable:
        return cls(
            n=int(data["n"]),
            scores=tuple(float(s) for s in data["scores"]),
            method=str(data.get("method", "lac")),
        )


def fit_conformal(scores: Any, max_points: int = _DEFAULT_POINTS) -> ConformalTable:
    """The table of calibration ``scores`` (at most ``max_points`` order statistics)."""
    s = np.sort(np.asarray(scores, dtype=float).reshape(-1))
    if s.size == 0:
        raise ValueError("no calibration scores")
    if np.isnan(s).any():
        raise ValueError("calibration scores must not be NaN")
    n = int(s.size)
    m = min(n, max(1, int(max_points)))
    ranks = [math.ceil((j + 1) * n / m) for j in range(m)]
    return ConformalTable(n=n, scores=tuple(float(s[r - 1]) for r in ranks))


def prediction_set(option_probs: dict[str, float], threshold: float) -> list[str]:
    """The options with ``1 - p <= threshold``, most probable first (ties: the given order); the
    most probable option is always included, so a set is never empty."""
    ranked = sorted(option_probs.items(), key=lambda item: -item[1])
    if not ranked:
        return []
    # The tolerance only adds an option whose score equals the threshold up to rounding (the fit
    # and the gateway compute softmaxes differently): a superset, so coverage is kept.
    kept = [label for label, p in ranked if 1.0 - p <= threshold + _TOLERANCE]
    return kept or [ranked[0][0]]
