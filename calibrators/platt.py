"""Platt scaling: a logistic map of ``logit(raw confidence)`` fitted on correctness labels.

The default for free-form answers with few labels (docs/architecture.md, "Confidence math"): two
parameters cannot overfit much. Fitting uses Platt's (1999) smoothed targets
``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` instead of 1 and 0, so the maximum-likelihood
solution stays finite when the classes are separable or only one class was seen (then the map is
a constant near the observed rate).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import expit

__all__ = ["PlattScaler"]

_EPS = 1e-6  # raw confidences are clipped to [eps, 1 - eps] before the logit


def _logit(raw: Any) -> np.ndarray:
    p = np.clip(np.asarray(raw, dtype=float).reshape(-1), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(p) - np.log1p(-p))


class PlattScaler:
    """``p = sigmoid(coef_ * logit(raw) + intercept_)``."""

    def fit(self, raw_confidence: Any, correct: Any) -> PlattScaler:
        """Newton-Raphson on the (smoothed-target) logistic log-loss; two parameters."""
        x = _logit(raw_confidence)
        y = np.asarray(correct, dtype=float).reshape(-1)
        if x.size == 0 or x.size != y.size:
            raise ValueError("need the same, non-zero number of confidences and labels")
        n_pos = float(y.sum())
        n_neg = float(y.size - n_pos)
        target = np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

        design = np.column_stack([x, np.ones_like(x)])
        rate = target.mean()
        params = np.array([0.0, math.log(rate / (1.0 - rate))])
        loss = self._loss(design, target, params)
        for _ in range(100):
            p = expit(design @ params)
            grad = design.T @ (p - target)
            hess = design.T @ (design * (p * (1.0 - p))[:, None]) + 1e-10 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            scale = 1.0
            while True:  # backtracking keeps Newton monotone on badly scaled inputs
                candidate = params - scale * step
                new_loss = self._loss(design, target, candidate)
                if new_loss <= loss + 1e-12 * abs(loss) or scale < 1e-8:
                    break
                scale /= 2
            converged = np.max(np.abs(candidate - params)) < 1e-10
            params, loss = candidate, new_loss
            if converged:
                break
        self.coef_ = float(params[0])
        self.intercept_ = float(params[1])
        self.n_samples_ = int(x.size)
        return self

    @staticmethod
    def _loss(design: np.ndarray, target: np.ndarray, params: np.ndarray) -> float:
        z = design @ params
        return float((np.logaddexp(0.0, z) - target * z).sum())

    def _check_fitted(self) -> tuple[float, float]:
        if not hasattr(self, "coef_"):
            raise RuntimeError("PlattScaler is not fitted yet")
        return self.coef_, self.intercept_

    def predict_proba(self, raw_confidence: Any) -> np.ndarray:
        """Calibrated probability of being correct, shape ``(n,)``."""
        coef, intercept = self._check_fitted()
        return np.asarray(expit(coef * _logit(raw_confidence) + intercept), dtype=float)

    def _predict_scalar(self, raw: float) -> float:
        """One confidence without numpy overhead (request path)."""
        coef, intercept = self._check_fitted()
        p = min(max(raw, _EPS), 1.0 - _EPS)
        z = coef * (math.log(p) - math.log1p(-p)) + intercept
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable state."""
        coef, intercept = self._check_fitted()
        return {
            "type": "platt",
            "coef": coef,
            "intercept": intercept,
            "n_samples": int(getattr(self, "n_samples_", 0)),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlattScaler:
        """Rebuild a fitted scaler from :meth:`to_dict` output."""
        scaler = cls()
        scaler.coef_ = float(data["coef"])
        scaler.intercept_ = float(data["intercept"])
        scaler.n_samples_ = int(data.get("n_samples", 0))
        return scaler

    def __repr__(self) -> str:
        if not hasattr(self, "coef_"):
            return "PlattScaler()"
        return f"PlattScaler(coef_={self.coef_:.4g}, intercept_={self.intercept_:.4g})"
