"""Metrics against independent oracles (scikit-learn) and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from calibrators import (
    ReliabilityBin,
    aurc,
    auroc,
    brier_score,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    risk_coverage_curve,
    selective_risk_coverage,
)


def sample(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.beta(5, 2, n)
    if ties:
        conf = np.round(conf, 1)
    correct = (rng.random(n) < conf**1.5).astype(int)
    return conf, correct


# Hand-computed case, 10 uniform bins:
#   bin 1 [0.1, 0.2): 0.15, 0.15           -> acc 0/2,  conf 0.15,  gap 0.15
#   bin 6 [0.6, 0.7): 0.65, 0.65, 0.65     -> acc 2/3,  conf 0.65,  gap 0.01666...
#   bin 9 [0.9, 1.0]: 0.95, 1.0, 0.95, 0.9 -> acc 3/4,  conf 0.95,  gap 0.2
# ECE = (2 * 0.15 + 3 * (1/60) + 4 * 0.2) / 9 = 1.15 / 9 ; MCE = 0.2
HAND_CONF = [0.15, 0.15, 0.65, 0.65, 0.65, 0.95, 1.0, 0.95, 0.9]
HAND_CORRECT = [0, 0, 1, 1, 0, 1, 1, 0, 1]


def test_ece_on_a_hand_computed_case() -> None:
    assert expected_calibration_error(HAND_CONF, HAND_CORRECT) == pytest.approx(1.15 / 9)


def test_mce_on_a_hand_computed_case() -> None:
    assert maximum_calibration_error(HAND_CONF, HAND_CORRECT) == pytest.approx(0.2)


def test_uniform_bin_of_a_confidence_is_int_conf_times_n_bins_capped() -> None:
    # 0.3 * 10 == 3.0000000000000004 -> bin 3; 1.0 -> the last bin; 0.1 -> bin 1 (not bin 0).
    bins = reliability_bins([0.1, 0.3, 1.0, 0.0], [1, 1, 1, 1], n_bins=10)
    assert [b.count for b in bins] == [1, 1, 0, 1, 0, 0, 0, 0, 0, 1]


def test_ece_is_zero_when_every_bin_is_calibrated() -> None:
    conf = [0.25] * 4 + [0.75] * 4
    correct = [1, 0, 0, 0, 1, 1, 1, 0]  # 1/4 right at 0.25, 3/4 at 0.75
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_equals_the_count_weighted_gap_of_sklearn_calibration_curve_bins(
    strategy: str,
) -> None:
    conf, correct = sample(5000, seed=1)
    accuracy, mean_conf = calibration_curve(correct, conf, n_bins=10, strategy=strategy)
    counts = np.array([b.count for b in reliability_bins(conf, correct, 10, strategy)])
    counts = counts[counts > 0]
    expected = np.sum(counts * np.abs(accuracy - mean_conf)) / conf.size
    assert expected_calibration_error(conf, correct, 10, strategy) == pytest.approx(expected)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_bins_match_sklearn_calibration_curve(strategy: str) -> None:
    conf, correct = sample(5000, seed=2)
    accuracy, mean_conf = calibration_curve(correct, conf, n_bins=10, strategy=strategy)
    full = [b for b in reliability_bins(conf, correct, 10, strategy) if b.count]
    np.testing.assert_allclose([b.accuracy for b in full], accuracy)
    np.testing.assert_allclose([b.mean_confidence for b in full], mean_conf)
    assert sum(b.count for b in full) == conf.size


def test_empty_reliability_bins_have_zero_count_and_no_means() -> None:
    bins = reliability_bins([0.91, 0.95], [1, 0], n_bins=5)
    assert len(bins) == 5
    assert bins[0] == ReliabilityBin(0.0, 0.2, 0, None, None)
    assert bins[4].count == 2
    assert bins[4].accuracy == pytest.approx(0.5)
    assert bins[4].upper == pytest.approx(1.0)


def test_brier_score_matches_sklearn() -> None:
    conf, correct = sample(1000, seed=3)
    assert brier_score(conf, correct) == pytest.approx(brier_score_loss(correct, conf))


def test_negative_log_likelihood_matches_sklearn_log_loss() -> None:
    conf, correct = sample(1000, seed=4)
    conf = np.clip(conf, 0.01, 0.99)
    assert negative_log_likelihood(conf, correct) == pytest.approx(log_loss(correct, conf))


def test_negative_log_likelihood_is_finite_for_certain_wrong_answers() -> None:
    assert np.isfinite(negative_log_likelihood([1.0, 0.0], [0, 1]))


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn_roc_auc_score_with_and_without_ties(ties: bool) -> None:
    conf, correct = sample(2000, seed=5, ties=ties)
    assert auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf))


def test_auroc_is_nan_with_one_class() -> None:
    assert np.isnan(auroc([0.2, 0.9], [1, 1]))


def test_risk_coverage_curve_matches_a_brute_force_scan() -> None:
    conf, correct = sample(300, seed=6, ties=True)
    coverage, risk, thresholds = risk_coverage_curve(conf, correct)
    assert np.all(np.diff(thresholds) < 0)
    for cov, r, t in zip(coverage, risk, thresholds, strict=True):
        answered = conf >= t
        assert cov == pytest.approx(answered.mean())
        assert r == pytest.approx(1 - correct[answered].mean())
    assert coverage[-1] == pytest.approx(1.0)


def test_aurc_without_ties_is_the_mean_selective_risk_over_top_k_prefixes() -> None:
    conf, correct = sample(500, seed=7)
    order = np.argsort(-conf)
    errors = 1 - correct[order]
    expected = np.mean([errors[:k].sum() / k for k in range(1, conf.size + 1)])
    assert aurc(conf, correct) == pytest.approx(expected)


def test_aurc_of_a_perfect_ranking_is_lower_than_of_a_reversed_one() -> None:
    correct = np.array([1] * 8 + [0] * 2)
    good = np.linspace(1.0, 0.1, 10)
    assert aurc(good, correct) < aurc(good[::-1], correct)


def test_selective_risk_coverage_answers_at_and_above_the_threshold() -> None:
    coverage, risk = selective_risk_coverage([0.9, 0.8, 0.8, 0.3], [1, 0, 1, 0], 0.8)
    assert coverage == pytest.approx(0.75)
    assert risk == pytest.approx(1 / 3)


def test_selective_risk_of_answering_nothing_is_zero() -> None:
    assert selective_risk_coverage([0.2, 0.4], [0, 0], 0.5) == (0.0, 0.0)


def test_ece_on_a_million_items_agrees_with_a_per_bin_loop() -> None:
    conf, correct = sample(1_000_000, seed=8)
    ids = np.minimum((conf * 15).astype(int), 14)
    expected = (
        sum(abs(correct[ids == b].sum() - conf[ids == b].sum()) for b in range(15)) / conf.size
    )
    assert expected_calibration_error(conf, correct, n_bins=15) == pytest.approx(expected)


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError):
        brier_score([0.1, 0.2], [1])
