"""Isotonic regression of correctness on raw confidence: monotone, non-parametric.

Preferred over Platt once there are enough labels (about 1,000+; docs/architecture.md,
"Confidence math"). scikit-learn does the fit; the fitted step function is kept as its
thresholds and evaluated with ``np.interp`` (the same linear interpolation sklearn uses), so a
loaded profile needs no sklearn object.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["IsotonicCalibrator"]

_EPS = 1e-6  # outputs stay in [eps, 1 - eps] so NLL is finite


class IsotonicCalibrator:
    """Monotone map raw confidence -> probability correct, clipped to ``[1e-6, 1 - 1e-6]``."""

    def fit(self, raw_confidence: Any, correct: Any) -> IsotonicCalibrator:
        """Fit the non-decreasing step function; inputs outside the seen range are clipped."""
        x = np.asarray(raw_confidence, dtype=float).reshape(-1)
        y = np.asarray(correct, dtype=float).reshape(-1)
        if x.size == 0 or x.size != y.size:
            raise ValueError("need the same, non-zero number of confidences and labels")
        # imported here: scikit-learn costs ~90 MB and ~1 s, and only fitting needs it
        from sklearn.isotonic import IsotonicRegression

        model = IsotonicRegression(
            y_min=_EPS, y_max=1.0 - _EPS, increasing=True, out_of_bounds="clip"
        ).fit(x, y)
        self.x_thresholds_ = np.asarray(model.X_thresholds_, dtype=float)
        self.y_thresholds_ = np.asarray(model.y_thresholds_, dtype=float)
        self.n_samples_ = int(x.size)
        return self

    def _check_fitted(self) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "x_thresholds_"):
            raise RuntimeError("IsotonicCalibrator is not fitted yet")
        return self.x_thresholds_, self.y_thresholds_

    def predict_proba(self, raw_confidence: Any) -> np.ndarray:
        """Calibrated probability of being correct, shape ``(n,)``."""
        xs, ys = self._check_fitted()
        x = np.asarray(raw_confidence, dtype=float).reshape(-1)
        return np.asarray(np.clip(np.interp(x, xs, ys), _EPS, 1.0 - _EPS))

    def _predict_scalar(self, raw: float) -> float:
        """One confidence (request path)."""
        xs, ys = self._check_fitted()
        return min(max(float(np.interp(raw, xs, ys)), _EPS), 1.0 - _EPS)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable state: the step function's thresholds."""
        xs, ys = self._check_fitted()
        return {
            "type": "isotonic",
            "x_thresholds": [float(v) for v in xs],
            "y_thresholds": [float(v) for v in ys],
            "n_samples": int(getattr(self, "n_samples_", 0)),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsotonicCalibrator:
        """Rebuild from :meth:`to_dict` output (no sklearn object involved)."""
        calibrator = cls()
        calibrator.x_thresholds_ = np.asarray(data["x_thresholds"], dtype=float)
        calibrator.y_thresholds_ = np.asarray(data["y_thresholds"], dtype=float)
        if calibrator.x_thresholds_.size == 0 or (
            calibrator.x_thresholds_.shape != calibrator.y_thresholds_.shape
        ):
            raise ValueError("x_thresholds and y_thresholds must be non-empty and equally long")
        calibrator.n_samples_ = int(data.get("n_samples", 0))
        return calibrator

    def __repr__(self) -> str:
        if not hasattr(self, "x_thresholds_"):
            return "IsotonicCalibrator()"
        return f"IsotonicCalibrator(n_thresholds={self.x_thresholds_.size})"
