"""refit_profile: the champion/challenger fit the refit job runs (pure part)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibrators import Profile, TemperatureScaler, expected_calibration_error
from calibrators.refit import LabeledSet, RefitPolicy, holdout_mask, refit_profile


def _options_data(n: int, true_t: float, seed: int, binary_only: bool = False) -> LabeledSet:
    """Labels drawn from softmax(z / true_t); the observed logprobs are log_softmax(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3.0, size=(n, 4))
    logprobs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p_true = np.exp(z / true_t) / np.exp(z / true_t).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p_true])
    chosen = logprobs.argmax(axis=1)
    correct = (labels == chosen).astype(float)
    return LabeledSet(
        ids=[f"chatcmpl-{seed}-{i}" for i in range(n)],
        mode="options",
        correct=correct,
        option_logprobs=logprobs,
        labels=np.full(n, -1) if binary_only else labels,
        chosen=chosen,
    )


def _sequence_data(n: int, seed: int) -> LabeledSet:
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.05, 0.99, size=n)
    true_p = raw**3  # the raw confidence is far too high
    correct = (rng.uniform(size=n) < true_p).astype(float)
    return LabeledSet(
        ids=[f"cmpl-{i}" for i in range(n)], mode="sequence", correct=correct, raw_confidence=raw
    )


def test_overconfident_options_get_a_temperature_close_to_the_truth_and_lower_ece() -> None:
    data = _options_data(4000, true_t=2.5, seed=1)
    result = refit_profile(data, Profile.identity("m"), RefitPolicy())
    assert result.activate, result.reason
    assert result.candidate is not None and result.candidate.method == "temperature"
    assert result.candidate.calibrator["temperature"] == pytest.approx(2.5, rel=0.1)
    raw, cal = result.metrics["raw"]["ece"], result.metrics["calibrated"]["ece"]
    assert cal < raw


def test_reported_heldout_ece_matches_an_independent_recomputation() -> None:
    data = _options_data(3000, true_t=2.0, seed=2)
    policy = RefitPolicy()
    result = refit_profile(data, Profile.identity("m"), policy)
    test = data.subset(holdout_mask(data.ids, policy.holdout_fraction))
    t = result.candidate.calibrator["temperature"]
    logits = test.option_logprobs / t
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    conf = probs[np.arange(len(test)), test.chosen]
    assert result.metrics["calibrated"]["ece"] == pytest.approx(
        expected_calibration_error(conf, test.correct)
    )


def test_binary_only_labels_also_fit_a_temperature() -> None:
    data = _options_data(4000, true_t=2.5, seed=3, binary_only=True)
    result = refit_profile(data, Profile.identity("m"), RefitPolicy())
    assert result.activate
    assert result.candidate.calibrator["temperature"] > 1.5


def test_too_few_labels_gives_no_candidate_and_says_why() -> None:
    data = _options_data(20, true_t=2.0, seed=4)
    result = refit_profile(data, Profile.identity("m"), RefitPolicy(min_labels=50))
    assert result.candidate is None and not result.activate
    assert "20 labels" in result.reason


def test_a_champion_optimal_on_the_heldout_part_is_kept() -> None:
    data = _options_data(3000, true_t=2.0, seed=5)
    policy = RefitPolicy()
    test = data.subset(holdout_mask(data.ids, policy.holdout_fraction))
    best = TemperatureScaler().fit(test.option_logprobs, test.labels)
    champion = Profile(model="m", version=3, method="temperature", calibrator=best.to_dict())
    result = refit_profile(data, champion, policy)
    assert not result.activate
    assert "active profile kept" in result.reason
    assert result.metrics["heldout_nll"]["champion"] <= result.metrics["heldout_nll"]["challenger"]


def test_sequence_mode_uses_platt_below_and_considers_isotonic_above_the_label_bound() -> None:
    small = refit_profile(_sequence_data(500, 6), Profile.identity("m"), RefitPolicy())
    assert small.candidate.method == "platt"
    assert set(small.metrics["heldout_nll"]) == {"challenger", "champion", "platt"}
    big = refit_profile(
        _sequence_data(3000, 7), Profile.identity("m"), RefitPolicy(isotonic_min_labels=1000)
    )
    assert {"platt", "isotonic"} <= set(big.metrics["heldout_nll"])
    assert big.activate
    assert big.metrics["calibrated"]["ece"] < big.metrics["raw"]["ece"]


def test_holdout_split_is_stable_per_id_and_near_the_fraction() -> None:
    ids = [f"id-{i}" for i in range(5000)]
    mask = holdout_mask(ids, 0.3)
    assert mask.mean() == pytest.approx(0.3, abs=0.03)
    assert np.array_equal(holdout_mask(ids[::-1], 0.3), mask[::-1])


def test_candidate_profile_round_trips_through_json() -> None:
    result = refit_profile(_options_data(1000, 1.5, 8), Profile.identity("m"), RefitPolicy())
    text = json.dumps(result.candidate.to_dict(), allow_nan=False)
    assert Profile.from_dict(json.loads(text)) == result.candidate
