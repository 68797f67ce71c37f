"""Multi-feature logistic calibration: ``p = sigmoid(coef_ · z + intercept_)`` over named signals.

One raw confidence does not carry everything a response says about its own reliability: how much
the answer depends on the image (visual reliance), the first token's probability, the answer's
length... This calibrator takes any such named signals as columns, standardizes them (so one
small ridge penalty means the same on every column) and fits a logistic regression on
correctness labels by Newton's method.

Signals are named, and the names travel with the fitted state (``features_``), so the service
can hand :meth:`predict_row` a plain ``{name: value}`` mapping. A signal missing at predict time
(e.g. a visual probe that was skipped) or at fit time (NaN) takes the training mean of its column:
its term then contributes what an average item's does, rather than failing the answer.

``confidence_logit`` (``logit`` of the raw confidence) is the conventional first feature: with
it alone the map is Platt scaling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import expit

__all__ = ["CONFIDENCE_LOGIT", "FeatureLogistic", "confidence_logit"]

#: The feature name of ``logit(raw confidence)``; the service computes it from the score itself.
CONFIDENCE_LOGIT = "confidence_logit"

_EPS = 1e-6  # probabilities are clipped to [eps, 1 - eps] before the logit


def confidence_logit(raw: Any) -> np.ndarray:
    """``logit(raw)`` with the raw confidence clipped away from 0 and 1 (vectorized)."""
    p = np.clip(np.asarray(raw, dtype=float), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(p) - np.log1p(-p))


class FeatureLogistic:
    """Logistic regression on standardized named features, with a small ridge penalty.

    Parameters follow scikit-learn: constructor arguments are settings, ``fit`` learns the
    attributes ending in ``_`` and returns ``self``.
    """

    def __init__(self, features: Sequence[str], *, l2: float = 1e-2) -> None:
        if not features:
            raise ValueError("need at least one feature name")
        if len(set(features)) != len(features):
            raise ValueError(f"feature names repeat: {list(features)}")
        self.features = tuple(features)
        self.l2 = float(l2)

    def fit(self, X: Any, correct: Any) -> FeatureLogistic:
        """Fit on ``X`` of shape ``(n, len(features))`` (NaN = missing) and 0/1 ``correct``."""
        x = np.asarray(X, dtype=float).reshape(-1, len(self.features))
        y = np.asarray(correct, dtype=float).reshape(-1)
        if x.shape[0] == 0 or x.shape[0] != y.size:
            raise ValueError("need the same, non-zero number of feature rows and labels")
        observed = np.isfinite(x)
        counts = observed.sum(axis=0)
        mean = np.where(
            counts > 0, np.where(observed, x, 0.0).sum(axis=0) / np.maximum(counts, 1), 0.0
        )
        x = np.where(observed, x, mean)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = (x - mean) / scale
        design = np.column_stack([z, np.ones(len(y))])
        penalty = np.full(design.shape[1], self.l2)
        penalty[-1] = 0.0  # the intercept is not shrunk
        # Platt's smoothed targets keep the solution finite on separable or one-class data.
        n_pos = float(y.sum())
        n_neg = float(y.size - n_pos)
        target = np.where(y > 0.5, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        params = np.zeros(design.shape[1])
        rate = float(target.mean())
        params[-1] = math.log(rate / (1.0 - rate))
        loss = self._loss(design, target, params, penalty)
        for _ in range(100):
            p = expit(design @ params)
            grad = design.T @ (p - target) + penalty * params
            hess = design.T @ (design * (p * (1.0 - p))[:, None]) + np.diag(penalty + 1e-10)
            step = np.linalg.solve(hess, grad)
            scale_step = 1.0
            while True:  # backtracking keeps Newton monotone
                candidate = params - scale_step * step
                new_loss = self._loss(design, target, candidate, penalty)
                if new_loss <= loss + 1e-12 * abs(loss) or scale_step < 1e-8:
                    break
                scale_step /= 2
            converged = float(np.max(np.abs(candidate - params))) < 1e-10
            params, loss = candidate, new_loss
            if converged:
                break
        self.features_ = self.features
        self.mean_ = mean
        self.scale_ = scale
        self.coef_ = params[:-1].copy()
        self.intercept_ = float(params[-1])
        self.n_samples_ = int(y.size)
        return self

    @staticmethod
    def _loss(
        design: np.ndarray, target: np.ndarray, params: np.ndarray, penalty: np.ndarray
    ) -> float:
        z = design @ params
        return float((np.logaddexp(0.0, z) - target * z).sum() + 0.5 * (penalty * params**2).sum())

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("FeatureLogistic is not fitted yet")

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated probability of being correct for each row of ``X`` (NaN = missing)."""
        self._check_fitted()
        x = np.asarray(X, dtype=float).reshape(-1, len(self.features_))
        x = np.where(np.isfinite(x), x, self.mean_)
        return np.asarray(expit(((x - self.mean_) / self.scale_) @ self.coef_ + self.intercept_))

    def predict_row(self, values: Mapping[str, float | None]) -> float:
        """One item's probability from ``{feature name: value}`` (request path, no numpy)."""
        self._check_fitted()
        z = self.intercept_
        for name, mean, scale, coef in zip(
            self.features_,
            self.mean_.tolist(),
            self.scale_.tolist(),
            self.coef_.tolist(),
            strict=True,
        ):
            value = values.get(name)
            if value is None or not math.isfinite(value):
                value = mean
            z += coef * (value - mean) / scale
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable state."""
        self._check_fitted()
        return {
            "type": "logistic",
            "features": list(self.features_),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "l2": self.l2,
            "n_samples": self.n_samples_,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureLogistic:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""
        model = cls(data["features"], l2=float(data.get("l2", 1e-2)))
        model.features_ = model.features
        model.coef_ = np.asarray(data["coef"], dtype=float)
        model.intercept_ = float(data["intercept"])
        model.mean_ = np.asarray(data["mean"], dtype=float)
        model.scale_ = np.asarray(data["scale"], dtype=float)
        model.n_samples_ = int(data.get("n_samples", 0))
        if not len(model.coef_) == len(model.mean_) == len(model.scale_) == len(model.features_):
            raise ValueError("logistic calibrator: features, coef, mean and scale differ in length")
        return model

    def __repr__(self) -> str:
        if not hasattr(self, "coef_"):
            return f"FeatureLogistic(features={list(self.features)})"
        terms = ", ".join(f"{n}={c:.3g}" for n, c in zip(self.features_, self.coef_, strict=True))
        return f"FeatureLogistic({terms}, intercept_={self.intercept_:.3g})"
