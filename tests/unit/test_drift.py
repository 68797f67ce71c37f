"""Confidence-drift gauges."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from calibrators import ks_statistic, population_stability_index


def test_psi_is_near_zero_for_the_same_distribution() -> None:
    rng = np.random.default_rng(0)
    assert population_stability_index(rng.beta(5, 2, 20_000), rng.beta(5, 2, 20_000)) < 0.01


def test_psi_is_large_for_a_shifted_distribution() -> None:
    rng = np.random.default_rng(1)
    assert population_stability_index(rng.beta(5, 2, 20_000), rng.beta(2, 5, 20_000)) > 0.25


def test_psi_grows_with_the_shift() -> None:
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 1, 20_000)
    small = population_stability_index(ref, rng.normal(0.2, 1, 20_000))
    large = population_stability_index(ref, rng.normal(1.0, 1, 20_000))
    assert 0 < small < large


def test_psi_is_finite_when_current_leaves_bins_empty() -> None:
    ref = np.linspace(0, 1, 1000)
    assert np.isfinite(population_stability_index(ref, np.full(100, 0.99)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_statistic_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = np.round(rng.beta(5, 2, 3000), 2)  # ties included
    cur = np.round(rng.beta(4, 2, 1700), 2)
    assert ks_statistic(ref, cur) == pytest.approx(ks_2samp(ref, cur).statistic)


def test_empty_samples_are_rejected() -> None:
    with pytest.raises(ValueError):
        ks_statistic([], [0.5])
