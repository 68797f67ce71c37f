"""Before/after numbers on the held-out part, as printed and written to summary.json."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from calibrators import (
    auroc,
    brier_score,
    expected_calibration_error,
    selective_risk_coverage,
)
from clients.sdk import Calibration

from .loop import Answered


def _scored(answered: list[Answered]) -> list[tuple[Answered, Calibration]]:
    """The answers with a calibrated confidence, each with its calibration object."""
    return [
        (a, a.calibration)
        for a in answered
        if a.calibration is not None and a.calibration.confidence is not None
    ]


def _values(values: list[float | None]) -> np.ndarray:
    """`values` as a float array (a missing value becomes nan)."""
    return np.array(values, dtype=float)


def _clean(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def task_summary(answered: list[Answered]) -> dict[str, Any]:
    """Metrics of one task's held-out answers; items without a confidence are counted apart."""
    scored = _scored(answered)
    raw = _values([c.raw_confidence for _, c in scored])
    cal = _values([c.confidence for _, c in scored])
    correct = np.array([a.correct for a, _ in scored], dtype=float)
    thresholds = {c.threshold for _, c in scored}
    threshold = thresholds.pop() if len(thresholds) == 1 else None
    coverage, risk = (
        selective_risk_coverage(cal, correct, threshold)
        if threshold is not None and scored
        else (1.0, float(1 - correct.mean()) if scored else math.nan)
    )
    answerable = [a for a in answered if a.item.answerable]
    unanswerable = [a for a in answered if not a.item.answerable]
    methods = sorted({c.method for _, c in scored})
    temps = {c.temperature for _, c in scored if c.temperature is not None}
    return {
        "n": len(answered),
        "n_scored": len(scored),
        "method": ",".join(methods),
        "temperature": _clean(temps.pop()) if len(temps) == 1 else None,
        "accuracy": _clean(float(np.mean([a.correct for a in answered])) if answered else math.nan),
        "ece_raw": _clean(expected_calibration_error(raw, correct)) if scored else None,
        "ece_calibrated": _clean(expected_calibration_error(cal, correct)) if scored else None,
        "brier_raw": _clean(brier_score(raw, correct)) if scored else None,
        "brier_calibrated": _clean(brier_score(cal, correct)) if scored else None,
        "auroc_raw": _clean(auroc(raw, correct)) if scored else None,
        "auroc_calibrated": _clean(auroc(cal, correct)) if scored else None,
        "threshold": _clean(threshold) if threshold is not None else None,
        "coverage": _clean(coverage),
        "selective_risk": _clean(risk),
        "abstention_rate_answerable": _rate(answerable),
        "abstention_rate_unanswerable": _rate(unanswerable),
        "n_answerable": len(answerable),
        "n_unanswerable": len(unanswerable),
    }


def _rate(answered: list[Answered]) -> float | None:
    return _clean(float(np.mean([a.abstained for a in answered]))) if answered else None


def arrays(answered: list[Answered]) -> dict[str, np.ndarray]:
    """Raw/calibrated confidence and correctness of the scored answers (for the figures)."""
    scored = _scored(answered)
    return {
        "raw": _values([c.raw_confidence for _, c in scored]),
        "calibrated": _values([c.confidence for _, c in scored]),
        "correct": np.array([a.correct for a, _ in scored], dtype=float),
    }
