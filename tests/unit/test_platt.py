"""PlattScaler on logit(raw confidence)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, logit

from calibrators import PlattScaler, expected_calibration_error, negative_log_likelihood


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True probability p; the model reports sigmoid(2.5 * logit(p) + 1): overconfident."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2.0, 2.0, n)
    correct = (rng.random(n) < p).astype(int)
    return expit(2.5 * logit(p) + 1.0), correct


def test_platt_recovers_the_inverse_distortion() -> None:
    raw, correct = overconfident(50_000, seed=0)
    scaler = PlattScaler().fit(raw, correct)
    assert scaler.coef_ == pytest.approx(1 / 2.5, rel=0.05)
    assert scaler.intercept_ == pytest.approx(-1.0 / 2.5, abs=0.05)


def test_platt_improves_nll_and_ece_on_held_out_data() -> None:
    raw, correct = overconfident(2000, seed=1)
    raw_test, correct_test = overconfident(20_000, seed=2)
    calibrated = PlattScaler().fit(raw, correct).predict_proba(raw_test)
    assert negative_log_likelihood(calibrated, correct_test) < negative_log_likelihood(
        raw_test, correct_test
    )
    assert expected_calibration_error(calibrated, correct_test) < 0.5 * expected_calibration_error(
        raw_test, correct_test
    )


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_labels_give_a_finite_near_constant_map(label: int) -> None:
    raw = np.linspace(0.05, 0.95, 40)
    scaler = PlattScaler().fit(raw, np.full(40, label))
    out = scaler.predict_proba(raw)
    assert np.all(np.isfinite(out))
    assert np.all((out > 0) & (out < 1))
    expected_side = out > 0.5 if label else out < 0.5
    assert expected_side.all()


def test_separable_labels_do_not_diverge() -> None:
    raw = np.linspace(0.1, 0.9, 20)
    scaler = PlattScaler().fit(raw, (raw > 0.5).astype(int))
    assert np.isfinite(scaler.coef_)
    assert np.isfinite(scaler.intercept_)


def test_round_trip_through_json_gives_identical_predictions() -> None:
    raw, correct = overconfident(500, seed=3)
    scaler = PlattScaler().fit(raw, correct)
    rebuilt = PlattScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(rebuilt.predict_proba(raw), scaler.predict_proba(raw))


def test_scalar_path_matches_the_vectorized_one() -> None:
    raw, correct = overconfident(300, seed=4)
    scaler = PlattScaler().fit(raw, correct)
    for x in (0.0, 1e-9, 0.3, 0.77, 1.0):
        assert scaler._predict_scalar(x) == pytest.approx(scaler.predict_proba([x])[0], rel=1e-12)
