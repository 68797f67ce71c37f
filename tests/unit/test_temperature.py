"""TemperatureScaler: continuous fit beats the paper's grid; recovers a known temperature."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax

from calibrators import TemperatureScaler, grid_search_temperature


def synthetic(
    n: int, k: int, true_t: float, seed: int, scale: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits z; labels ~ softmax(z / T_true); observed option logprobs = log_softmax(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(n, k))
    p = np.exp(log_softmax(z / true_t, axis=1))
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return log_softmax(z, axis=1), labels


def reference_nll(logprobs: np.ndarray, t: float, labels, chosen=None, correct=None) -> float:
    """Mean NLL written out independently of the library (log_softmax per row)."""
    logp = log_softmax(logprobs / t, axis=1)
    rows = np.arange(len(labels))
    labels = np.asarray(labels)
    total = -logp[rows[labels >= 0], labels[labels >= 0]].sum()
    if (labels < 0).any():
        lp_c = logp[rows[labels < 0], np.asarray(chosen)[labels < 0]]
        y = np.asarray(correct)[labels < 0]
        total -= np.where(y == 1, lp_c, np.log(-np.expm1(np.minimum(lp_c, -1e-300)))).sum()
    return total / len(labels)


@pytest.mark.parametrize("true_t", [0.5, 1.5, 3.0])
def test_fitted_temperature_is_within_5_percent_of_the_true_one_with_5k_samples(
    true_t: float,
) -> None:
    logprobs, labels = synthetic(5000, 4, true_t, seed=7)
    fitted = TemperatureScaler().fit(logprobs, labels).temperature_
    assert abs(fitted - true_t) / true_t < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [2, 4, 10])
def test_nll_of_the_fit_is_no_worse_than_the_grid_search_multiclass(seed: int, k: int) -> None:
    logprobs, labels = synthetic(2000, k, true_t=[0.7, 1.3, 2.2, 4.0][seed], seed=seed)
    fitted = TemperatureScaler().fit(logprobs, labels).temperature_
    grid = grid_search_temperature(logprobs, labels)
    assert reference_nll(logprobs, fitted, labels) <= reference_nll(logprobs, grid, labels) + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nll_of_the_fit_is_no_worse_than_the_grid_search_binary_only(seed: int) -> None:
    logprobs, labels = synthetic(3000, 4, true_t=[0.6, 1.8, 3.5][seed], seed=seed)
    chosen = logprobs.argmax(axis=1)
    correct = (chosen == labels).astype(int)
    unknown = np.full(len(labels), -1)
    scaler = TemperatureScaler().fit(logprobs, unknown, chosen=chosen, correct=correct)
    grid = grid_search_temperature(logprobs, unknown, chosen=chosen, correct=correct)
    fit_nll = reference_nll(logprobs, scaler.temperature_, unknown, chosen, correct)
    grid_nll = reference_nll(logprobs, grid, unknown, chosen, correct)
    assert fit_nll <= grid_nll + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nll_of_the_fit_is_no_worse_than_the_grid_search_mixed_labels(seed: int) -> None:
    logprobs, labels = synthetic(3000, 5, true_t=[0.8, 1.6, 2.5][seed], seed=seed)
    rng = np.random.default_rng(100 + seed)
    chosen = logprobs.argmax(axis=1)
    correct = (chosen == labels).astype(int)
    mixed = np.where(rng.random(len(labels)) < 0.5, labels, -1)
    scaler = TemperatureScaler().fit(logprobs, mixed, chosen=chosen, correct=correct)
    grid = grid_search_temperature(logprobs, mixed, chosen=chosen, correct=correct)
    fit_nll = reference_nll(logprobs, scaler.temperature_, mixed, chosen, correct)
    grid_nll = reference_nll(logprobs, grid, mixed, chosen, correct)
    assert fit_nll <= grid_nll + 1e-12


def test_binary_correctness_alone_recovers_the_temperature() -> None:
    logprobs, labels = synthetic(20000, 4, 2.0, seed=11)
    chosen = logprobs.argmax(axis=1)
    correct = (chosen == labels).astype(int)
    scaler = TemperatureScaler().fit(logprobs, chosen=chosen, correct=correct)
    assert abs(scaler.temperature_ - 2.0) / 2.0 < 0.1


def test_nll_attribute_and_method_agree_with_an_independent_computation() -> None:
    logprobs, labels = synthetic(1000, 4, 1.7, seed=3)
    scaler = TemperatureScaler().fit(logprobs, labels)
    expected = reference_nll(logprobs, scaler.temperature_, labels)
    assert scaler.nll_ == pytest.approx(expected, rel=1e-9)
    assert scaler.nll(logprobs, labels) == pytest.approx(expected, rel=1e-9)
    assert scaler.n_samples_ == 1000


def test_ragged_option_counts_padded_with_minus_inf_match_separate_fits() -> None:
    # Items with 2 options padded to 4 behave as if the padding were not there.
    two, labels_two = synthetic(1500, 2, 1.8, seed=5)
    four, labels_four = synthetic(1500, 4, 1.8, seed=6)
    padded = np.concatenate([np.pad(two, ((0, 0), (0, 2)), constant_values=-np.inf), four])
    labels = np.concatenate([labels_two, labels_four])
    scaler = TemperatureScaler().fit(padded, labels)
    grid = grid_search_temperature(padded, labels)
    assert np.isfinite(scaler.nll_)
    assert reference_nll(padded, scaler.temperature_, labels) <= reference_nll(padded, grid, labels)
    proba = scaler.predict_proba(padded)
    assert np.all(proba[:1500, 2:] == 0.0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_single_option_rows_carry_no_information_and_do_not_break_the_fit() -> None:
    logprobs, labels = synthetic(2000, 3, 0.9, seed=8)
    lonely = np.full((50, 3), -np.inf)
    lonely[:, 0] = 0.0
    with_lonely = np.concatenate([logprobs, lonely])
    labels_lonely = np.concatenate([labels, np.zeros(50, dtype=int)])
    a = TemperatureScaler().fit(logprobs, labels).temperature_
    b = TemperatureScaler().fit(with_lonely, labels_lonely).temperature_
    assert b == pytest.approx(a, rel=1e-6)


def test_predict_proba_is_the_softmax_of_logprobs_over_temperature() -> None:
    logprobs, labels = synthetic(100, 4, 2.0, seed=9)
    scaler = TemperatureScaler().fit(logprobs, labels)
    z = logprobs / scaler.temperature_
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scaler.predict_proba(logprobs), expected, rtol=1e-12)
    chosen = logprobs.argmax(axis=1)
    np.testing.assert_allclose(
        scaler.confidence(logprobs, chosen), expected[np.arange(100), chosen], rtol=1e-12
    )


def test_fitted_temperature_stays_within_its_bounds() -> None:
    # Labels are always the top option: the NLL keeps falling as T -> 0.
    logprobs, _ = synthetic(500, 4, 1.0, seed=10)
    scaler = TemperatureScaler(min_temperature=0.1).fit(logprobs, logprobs.argmax(axis=1))
    assert scaler.temperature_ == pytest.approx(0.1)


def test_to_dict_from_dict_round_trip_through_json_gives_identical_predictions() -> None:
    logprobs, labels = synthetic(500, 4, 2.5, seed=12)
    scaler = TemperatureScaler().fit(logprobs, labels)
    rebuilt = TemperatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert rebuilt.temperature_ == scaler.temperature_
    np.testing.assert_array_equal(rebuilt.predict_proba(logprobs), scaler.predict_proba(logprobs))


def test_labels_pointing_at_padding_are_rejected() -> None:
    logprobs = np.array([[0.0, -1.0, -np.inf]])
    with pytest.raises(ValueError):
        TemperatureScaler().fit(logprobs, [2])


def test_binary_rows_without_chosen_and_correct_are_rejected() -> None:
    with pytest.raises(ValueError):
        TemperatureScaler().fit(np.zeros((2, 3)), [-1, 0])


def test_predict_before_fit_raises() -> None:
    with pytest.raises(RuntimeError):
        TemperatureScaler().predict_proba(np.zeros((1, 2)))
