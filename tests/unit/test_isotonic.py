"""IsotonicCalibrator: sklearn fit, thresholds + np.interp at prediction time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression

from calibrators import IsotonicCalibrator, expected_calibration_error, negative_log_likelihood


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    correct = (rng.random(n) < p).astype(int)
    return expit(3.0 * logit(p) + 0.5), correct


def test_predictions_match_sklearn_within_the_clipping_bounds() -> None:
    raw, correct = miscalibrated(3000, seed=0)
    ours = IsotonicCalibrator().fit(raw, correct)
    theirs = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6).fit(raw, correct)
    grid = np.linspace(-0.1, 1.1, 301)
    np.testing.assert_allclose(ours.predict_proba(grid), theirs.predict(grid), atol=1e-12)


def test_isotonic_improves_nll_and_ece_on_held_out_data() -> None:
    raw, correct = miscalibrated(5000, seed=1)
    raw_test, correct_test = miscalibrated(20_000, seed=2)
    calibrated = IsotonicCalibrator().fit(raw, correct).predict_proba(raw_test)
    assert negative_log_likelihood(calibrated, correct_test) < negative_log_likelihood(
        raw_test, correct_test
    )
    assert expected_calibration_error(calibrated, correct_test) < 0.5 * expected_calibration_error(
        raw_test, correct_test
    )


def test_outputs_stay_inside_the_open_unit_interval() -> None:
    raw = np.array([0.1, 0.2, 0.8, 0.9])
    out = IsotonicCalibrator().fit(raw, [0, 0, 1, 1]).predict_proba([0.0, 0.1, 0.9, 1.0])
    assert out.min() >= 1e-6
    assert out.max() <= 1 - 1e-6


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_labels_do_not_crash(label: int) -> None:
    out = IsotonicCalibrator().fit([0.2, 0.5, 0.7], [label] * 3).predict_proba([0.1, 0.6, 0.99])
    assert np.all(np.isfinite(out))


def test_round_trip_needs_no_sklearn_object_and_predicts_identically() -> None:
    raw, correct = miscalibrated(1000, seed=3)
    fitted = IsotonicCalibrator().fit(raw, correct)
    data = json.loads(json.dumps(fitted.to_dict()))
    rebuilt = IsotonicCalibrator.from_dict(data)
    grid = np.linspace(0, 1, 101)
    np.testing.assert_array_equal(rebuilt.predict_proba(grid), fitted.predict_proba(grid))
    assert all(isinstance(v, float) for v in data["x_thresholds"])


def test_scalar_path_matches_the_vectorized_one() -> None:
    raw, correct = miscalibrated(300, seed=4)
    fitted = IsotonicCalibrator().fit(raw, correct)
    for x in (0.0, 0.33, 0.5, 0.91, 1.0):
        assert fitted._predict_scalar(x) == pytest.approx(fitted.predict_proba([x])[0])
