"""Profile (JSON value object) and apply_profile (the request-time step)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from calibrators import (
    IsotonicCalibrator,
    OptionScore,
    PlattScaler,
    Profile,
    SequenceScore,
    TemperatureScaler,
    apply_profile,
    select_threshold,
)

SCORE = OptionScore(
    options=("A", "B", "C", "D"),
    option_logprobs=(-1.2, -0.4, -2.5, -6.0),
    truncated=(False, False, False, True),
    answer="B",
    answer_index=1,
    position=3,
)
NOT_FOUND = OptionScore(("A", "B"), (), (), None, None, None)


def numpy_softmax(logprobs: tuple[float, ...], temperature: float) -> np.ndarray:
    z = np.array(logprobs) / temperature
    return np.exp(z - z.max()) / np.exp(z - z.max()).sum()


def temperature_profile(temperature: float, **changes: object) -> Profile:
    scaler = TemperatureScaler.from_dict({"temperature": temperature})
    return Profile(
        model="gemma-3-270m", method="temperature", calibrator=scaler.to_dict(), **changes
    )


def fitted_platt() -> PlattScaler:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.05, 0.95, 500)
    return PlattScaler().fit(raw, (rng.random(500) < raw**2).astype(int))


def test_a_full_profile_round_trips_through_json() -> None:
    rng = np.random.default_rng(1)
    conf = rng.beta(5, 1.5, 3000)
    choice = select_threshold(conf, (rng.random(3000) < conf).astype(int))
    profile = temperature_profile(
        1.7,
        task="vqa",
        version=3,
        threshold=choice.threshold,
        threshold_choice=choice.to_dict(),
        system_prompt="Answer with the letter only.",
        options=["A", "B", "C", "D", "E"],
        idk_option="E",
        abstain="replace",
        metrics={"raw": {"ece": 0.12}, "calibrated": {"ece": 0.03}},
        fitted_at="2026-01-01T00:00:00+00:00",
        n_labels=3000,
        notes="refit after drift",
    )
    text = json.dumps(profile.to_dict(), allow_nan=False)
    assert Profile.from_dict(json.loads(text)) == profile


def test_from_dict_ignores_keys_it_does_not_know() -> None:
    data = Profile.identity("m").to_dict() | {"added_in_a_later_version": 1}
    assert Profile.from_dict(data) == Profile.identity("m")


def test_identity_profile_gives_raw_equal_to_calibrated() -> None:
    result = apply_profile(Profile.identity("m"), SCORE)
    assert result.method == "none"
    assert result.confidence == result.raw_confidence == SCORE.raw_confidence
    assert result.temperature == 1.0
    assert result.threshold is None
    assert not result.below_threshold


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.3, 7.0])
def test_temperature_profile_scales_every_option_exactly(temperature: float) -> None:
    result = apply_profile(temperature_profile(temperature), SCORE)
    expected = numpy_softmax(SCORE.option_logprobs, temperature)
    assert result.confidence == pytest.approx(expected[1], rel=1e-12)
    assert result.raw_confidence == pytest.approx(numpy_softmax(SCORE.option_logprobs, 1.0)[1])
    assert list(result.option_probs.values()) == pytest.approx(list(expected), rel=1e-12)
    assert list(result.option_probs) == ["A", "B", "C", "D"]
    assert result.temperature == temperature
    assert result.answer == "B"


def test_below_threshold_compares_calibrated_confidence_with_the_profile_threshold() -> None:
    confidence = numpy_softmax(SCORE.option_logprobs, 2.0)[1]
    assert apply_profile(
        temperature_profile(2.0, threshold=confidence + 1e-9), SCORE
    ).below_threshold
    assert not apply_profile(temperature_profile(2.0, threshold=confidence), SCORE).below_threshold


def test_request_threshold_overrides_the_profile_threshold() -> None:
    result = apply_profile(temperature_profile(2.0, threshold=0.99), SCORE, threshold=0.1)
    assert result.threshold == 0.1
    assert not result.below_threshold


def test_no_answer_found_gives_no_confidence() -> None:
    result = apply_profile(temperature_profile(2.0, threshold=0.5), NOT_FOUND)
    assert result.confidence is None
    assert result.raw_confidence is None
    assert result.answer is None
    assert not result.below_threshold


def test_temperature_profile_on_a_sequence_score_is_not_applicable() -> None:
    seq = SequenceScore(mean_logprob=-0.3, min_logprob=-1.0, n_tokens=5)
    result = apply_profile(temperature_profile(2.0), seq)
    assert result.method == "none"
    assert result.confidence == pytest.approx(np.exp(-0.3))
    assert result.temperature is None


def test_platt_profile_maps_the_sequence_raw_confidence() -> None:
    scaler = fitted_platt()
    profile = Profile("m", mode="sequence", method="platt", calibrator=scaler.to_dict())
    seq = SequenceScore(mean_logprob=-0.2, min_logprob=-0.9, n_tokens=7)
    result = apply_profile(profile, seq)
    assert result.method == "platt"
    assert result.raw_confidence == pytest.approx(np.exp(-0.2))
    assert result.confidence == pytest.approx(scaler.predict_proba([np.exp(-0.2)])[0])


def test_isotonic_profile_maps_the_sequence_raw_confidence() -> None:
    rng = np.random.default_rng(2)
    raw = rng.uniform(0, 1, 2000)
    iso = IsotonicCalibrator().fit(raw, (rng.random(2000) < raw**3).astype(int))
    profile = Profile("m", mode="sequence", method="isotonic", calibrator=iso.to_dict())
    seq = SequenceScore(mean_logprob=-0.5, min_logprob=-2.0, n_tokens=3)
    result = apply_profile(profile, seq)
    assert result.confidence == pytest.approx(iso.predict_proba([np.exp(-0.5)])[0])


def test_sequence_score_without_tokens_gives_no_confidence() -> None:
    result = apply_profile(Profile.identity("m"), SequenceScore(None, None, 0))
    assert result.confidence is None


def test_changing_the_calibrator_drops_the_cached_one() -> None:
    profile = temperature_profile(2.0)
    first = apply_profile(profile, SCORE).confidence
    profile.calibrator = TemperatureScaler.from_dict({"temperature": 0.5}).to_dict()
    assert apply_profile(profile, SCORE).confidence != first
    replaced = dataclasses.replace(profile, calibrator=temperature_profile(2.0).calibrator)
    assert apply_profile(replaced, SCORE).confidence == first


def test_a_method_without_a_calibrator_is_rejected() -> None:
    with pytest.raises(ValueError):
        Profile("m", method="platt")


def test_a_calibrator_of_another_method_is_rejected() -> None:
    with pytest.raises(ValueError):
        Profile("m", method="platt", calibrator={"type": "temperature", "temperature": 2.0})


def test_an_unknown_abstain_policy_is_rejected() -> None:
    with pytest.raises(ValueError):
        Profile("m", abstain="sometimes")
