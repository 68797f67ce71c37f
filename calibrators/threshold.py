"""Choosing the abstain threshold: answer iff ``confidence >= threshold``, else abstain.

``method="ltt"`` (Learn-Then-Test, Angelopoulos et al. 2021) gives a finite-sample guarantee:
with probability at least ``1 - delta`` over the calibration data, the selective risk (error rate
among answered items) of the returned threshold is at most ``target_risk``. Each candidate
threshold λ is a null hypothesis "risk(λ) > target_risk" with a valid p-value from the
``n_λ`` answered items and their ``e_λ`` errors: the exact binomial tail
``P(Bin(n_λ, target_risk) <= e_λ)`` or the Hoeffding-Bentkus bound. Candidates are tested in a fixed
sequence from the highest threshold down, each at level δ, stopping at the first that fails;
fixed-sequence testing controls the family-wise error at δ without a multiplicity correction.

``method="coverage"`` picks the highest threshold that still answers at least
``target_coverage`` of the items; that is a coverage target, not a risk guarantee.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

__all__ = ["ThresholdChoice", "select_threshold"]

_MAX_CANDIDATES = 1000


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold, what it achieves on the calibration data, and whether certified."""

    threshold: float
    coverage: float
    risk: float
    guaranteed: bool
    method: str
    target_risk: float | None
    delta: float | None
    target_coverage: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict."""
        return asdict(self)


def _abstain_all(conf: np.ndarray) -> float:
    """A threshold above every confidence seen and above 1.0: abstain on everything."""
    top = max(1.0, float(conf.max())) if conf.size else 1.0
    return float(np.nextafter(top, np.inf))


def _p_values(errors: np.ndarray, n: np.ndarray, alpha: float, kind: str) -> np.ndarray:
    """p-values of H0: risk > alpha, from e errors among n answered items (n >= 1)."""
    from scipy.stats import binom  # lazily: scipy.stats costs ~70 MB at import in the gateway

    if kind == "binomial":
        return np.asarray(binom.cdf(errors, n, alpha), dtype=float)
    if kind == "hb":
        # Hoeffding-Bentkus (Bates et al. 2021): min(exp(-n h1(min(r, a), a)), e * P(Bin <= e)).
        r = np.minimum(errors / n, alpha)
        with np.errstate(divide="ignore", invalid="ignore"):
            h1 = np.where(r > 0, r * np.log(r / alpha), 0.0) + (1 - r) * np.log(
                (1 - r) / (1 - alpha)
            )
        hoeffding = np.exp(-n * h1)
        bentkus = math.e * binom.cdf(np.ceil(errors), n, alpha)
        return np.asarray(np.minimum(np.minimum(hoeffding, bentkus), 1.0), dtype=float)
    raise ValueError(f"unknown p_value {kind!r}; use 'binomial' or 'hb'")


@lru_cache(maxsize=64)
def _first_tested_n(alpha: float, delta: float, kind: str) -> int:
    """Answered-set size at which the fixed sequence starts.

    The smallest n at which an observed risk of alpha/2 would already be certified. Smaller sets
    have almost no power (with alpha = delta = 0.1, 22 answers must all be right), so testing them
    first would end the sequence by chance before any real candidate is seen. The rule depends on
    (alpha, delta, n) only, never on labels, so the pre-specified order stays valid.
    """
    n = max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))
    while True:
        errors = np.array([math.floor(n * alpha / 2)])
        if _p_values(errors, np.array([n]), alpha, kind)[0] <= delta:
            return n
        n += 1


def select_threshold(
    conf: Any,
    correct: Any,
    target_risk: float = 0.1,
    delta: float = 0.1,
    method: Literal["ltt", "coverage"] = "ltt",
    target_coverage: float | None = None,
    p_value: Literal["binomial", "hb"] = "binomial",
) -> ThresholdChoice:
    """Pick the lowest threshold certified to keep selective risk <= target_risk (w.p. 1-delta).

    Candidates are the distinct confidences (at most ~1000 quantiles of them, for speed), tested
    from high to low, starting where the answered set is large enough for the test to have
    power (see ``_first_tested_n``; a label-free rule, so the guarantee is unaffected).
    If no threshold is certified, the result has ``guaranteed=False`` and a threshold above 1.0
    and above every confidence: coverage 0, abstain on everything.
    """
    c = np.asarray(conf, dtype=float).reshape(-1)
    y = np.asarray(correct, dtype=float).reshape(-1)
    if c.shape != y.shape:
        raise ValueError("conf and correct differ in length")
    n = int(c.size)

    if method == "coverage":
        if target_coverage is None or not 0.0 <= target_coverage <= 1.0:
            raise ValueError("method='coverage' needs target_coverage in [0, 1]")
        k = math.ceil(target_coverage * n - 1e-12)
        threshold = _abstain_all(c) if k <= 0 else float(np.sort(c)[::-1][k - 1])
        coverage, risk = _selective(c, y, threshold)
        return ThresholdChoice(
            threshold, coverage, risk, False, "coverage", None, None, target_coverage, n
        )
    if method != "ltt":
        raise ValueError(f"unknown method {method!r}; use 'ltt' or 'coverage'")
    if not 0.0 < target_risk < 1.0 or not 0.0 < delta < 1.0:
        raise ValueError("target_risk and delta must be in (0, 1)")
    _p_values(np.zeros(1), np.ones(1), target_risk, p_value)  # validates p_value early

    none = ThresholdChoice(_abstain_all(c), 0.0, 0.0, False, "ltt", target_risk, delta, None, n)
    if n == 0:
        return none
    order = np.argsort(-c, kind="stable")
    c_desc = c[order]
    errors_desc = np.cumsum(1.0 - y[order])

    candidates = np.unique(c)[::-1]  # high to low
    if candidates.size > _MAX_CANDIDATES:  # an evenly spaced grid of order statistics
        picks = np.linspace(0, n - 1, _MAX_CANDIDATES).round().astype(np.int64)
        candidates = np.unique(c_desc[picks])[::-1]
    # Items answered at each candidate: conf >= λ  <=>  position in the descending order.
    n_answered = np.searchsorted(-c_desc, -candidates, side="right")
    usable = n_answered >= _first_tested_n(target_risk, delta, p_value)
    candidates, n_answered = candidates[usable], n_answered[usable]
    if candidates.size == 0:
        return none
    n_errors = errors_desc[n_answered - 1]
    p = _p_values(n_errors, n_answered, target_risk, p_value)
    failed = np.flatnonzero(p > delta)
    n_certified = int(failed[0]) if failed.size else candidates.size
    if n_certified == 0:
        return none
    i = n_certified - 1
    return ThresholdChoice(
        threshold=float(candidates[i]),
        coverage=float(n_answered[i] / n),
        risk=float(n_errors[i] / n_answered[i]),
        guaranteed=True,
        method="ltt",
        target_risk=target_risk,
        delta=delta,
        target_coverage=None,
        n=n,
    )


def _selective(c: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float]:
    answered = c >= threshold
    k = int(answered.sum())
    if k == 0:
        return 0.0, 0.0
    return k / c.size, float((1.0 - y[answered]).sum() / k)
