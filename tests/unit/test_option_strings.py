"""Answer strings as options: matching on the generated path, the trie walk, exact likelihoods.

Hand-written logprobs in vLLM's shapes for the rules one at a time; the same rules on responses
recorded from the real engine are in test_engine_fixtures.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibrators import score_options


def step(token: str, logprob: float, top: dict[str, float] | None = None) -> dict:
    top = {token: logprob} if top is None else top
    return {
        "token": token,
        "logprob": logprob,
        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()],
    }


def lse(*values: float) -> float:
    return float(np.logaddexp.reduce(values))


def test_a_letter_that_only_starts_an_option_names_none() -> None:
    content = [step(" Q", -0.2, {" Q": -0.2, " Quito": -1.0}), step(".", -0.1)]
    score = score_options(content, ["Quito", "Lima", "Bogota"])
    assert score.answer is None
    assert not score.found
    assert score.option_logprobs == ()


def test_an_answer_that_is_only_the_start_of_an_option_names_none() -> None:
    content = [step(" Guatemala", -0.3), step("\n", -0.1)]
    assert score_options(content, ["Guatemala City", "Lima"]).answer is None


def test_options_sharing_a_first_token_are_followed_to_where_they_depart() -> None:
    content = [
        step(" New", -0.5, {" New": -0.5, " Los": -1.5}),
        step(" York", -0.2, {" York": -0.2, " Delhi": -2.0, " Orleans": -3.0}),
        step("\n", -0.1),
    ]
    score = score_options(content, ["New York", "New Delhi", "New Orleans", "Los Angeles"])
    assert score.answer == "New York"
    assert score.position == 0
    assert score.option_logprobs == pytest.approx((-0.7, -2.5, -3.5, -1.5))
    assert score.truncated == (False,) * 4
    probs = score.probs()
    assert probs.sum() == pytest.approx(1.0)
    assert score.raw_confidence == pytest.approx(probs[0])


def test_the_longest_named_option_wins_and_the_shorter_keeps_what_does_not_continue() -> None:
    content = [
        step(" Mexico", -0.3, {" Mexico": -0.3, " Guadalajara": -3.0}),
        step(" City", math.log(0.8), {" City": math.log(0.8), "\n": math.log(0.15)}),
        step("\n", -0.01),
    ]
    score = score_options(content, ["Mexico", "Mexico City", "Guadalajara"])
    assert score.answer == "Mexico City"
    # "Mexico" is what was written up to " City" without going on into "Mexico City".
    assert score.option_logprobs == pytest.approx(
        (-0.3 + math.log(0.2), -0.3 + math.log(0.8), -3.0)
    )


def test_the_shorter_option_is_the_answer_when_the_text_stops_there() -> None:
    content = [
        step(" Mexico", -0.3),
        step("\n", math.log(0.7), {"\n": math.log(0.7), " City": math.log(0.25)}),
    ]
    score = score_options(content, ["Mexico City", "Mexico"])
    assert score.answer == "Mexico"
    assert score.option_logprobs == pytest.approx((-0.3 + math.log(0.25), -0.3 + math.log(0.75)))


def test_accents_case_and_surrounding_punctuation_are_normalized() -> None:
    content = [step(" **bog", -0.4, {" **bog": -0.4, " Bogotá": -1.2}), step("ota**.", -0.1)]
    score = score_options(content, ["Lima", "Bogotá"])
    assert score.answer == "Bogotá"
    assert score.position == 0
    # The path and the single-token spelling are two ways of writing the same option.
    assert score.option_logprobs[1] == pytest.approx(lse(-0.5, -1.2))
    assert score.truncated == (True, False)  # "Lima" is not listed: the K-th floor


def test_an_option_must_end_at_a_token_and_word_boundary() -> None:
    inside_token = [step(" Limassol", -0.2)]
    assert score_options(inside_token, ["Lima", "Nicosia"]).answer is None
    split_word = [step(" Lima", -0.2), step("ssol", -0.1)]
    assert score_options(split_word, ["Lima", "Nicosia"]).answer is None


def test_an_option_must_start_a_word() -> None:
    content = [step(" Sal", -0.2), step("ima", -0.1)]
    assert score_options(content, ["Lima", "Quito"]).answer is None


def test_a_one_letter_option_keeps_its_case() -> None:
    content = [step(" a", -0.1), step(" city", -0.2)]
    assert score_options(content, ["A", "B"]).answer is None
    longer = [step(" lima", -0.1)]
    assert score_options(longer, ["Lima", "Quito"]).answer == "Lima"


def test_hyphens_read_as_spaces() -> None:
    content = [step(" Saint", -0.2), step(" Pierre", -0.1)]
    assert score_options(content, ["Saint-Pierre", "Miquelon"]).answer == "Saint-Pierre"


def test_the_answer_can_come_after_other_words() -> None:
    content = [step(" It", -0.5), step(" is", -0.1), step(" San", -0.2), step(" Juan", -0.3)]
    score = score_options(content, ["San José", "San Juan"])
    assert score.answer == "San Juan"
    assert score.position == 2


def test_a_token_several_departing_options_could_continue_is_shared_and_flagged() -> None:
    content = [step(" Lima", -0.2, {" Lima": -0.2, " San": -1.0})]
    score = score_options(content, ["Lima", "San José", "San Juan"])
    assert score.answer == "Lima"
    assert score.option_logprobs == pytest.approx((-0.2, -1.0 - math.log(2), -1.0 - math.log(2)))
    assert score.truncated == (False, True, True)


def test_an_option_missing_from_the_top_k_where_it_departs_gets_the_kth_floor() -> None:
    content = [
        step(" New", -0.5, {" New": -0.5, " Los": -1.5}),
        step(" York", -0.2, {" York": -0.2, " Delhi": -2.0, " Jersey": -4.0}),
    ]
    score = score_options(content, ["New York", "New Delhi", "New Orleans"])
    assert score.option_logprobs[2] == pytest.approx(-0.5 - 4.0)
    assert score.truncated == (False, False, True)


def test_legacy_completions_shape_gives_the_same_walk() -> None:
    legacy = {
        "tokens": [" New", " York", "\n"],
        "token_logprobs": [-0.5, -0.2, -0.1],
        "top_logprobs": [
            {" New": -0.5, " Los": -1.5},
            {" York": -0.2, " Delhi": -2.0, " Orleans": -3.0},
            {"\n": -0.1},
        ],
    }
    score = score_options(legacy, ["New York", "New Delhi", "New Orleans", "Los Angeles"])
    assert score.answer == "New York"
    assert score.option_logprobs == pytest.approx((-0.7, -2.5, -3.5, -1.5))


def test_temperature_scaling_is_exact_on_option_logprobs() -> None:
    content = [
        step(" New", -0.5, {" New": -0.5, " Los": -1.5}),
        step(" York", -0.2, {" York": -0.2, " Delhi": -2.0, " Orleans": -3.0}),
    ]
    score = score_options(content, ["New York", "New Delhi", "New Orleans", "Los Angeles"])
    logits = np.array(score.option_logprobs) / 2.0
    np.testing.assert_allclose(score.probs(2.0), np.exp(logits) / np.exp(logits).sum())


def test_likelihoods_replace_the_path_distribution_but_not_the_match() -> None:
    content = [step(" New", -0.5), step(" York", -0.2)]
    options = ["New York", "New Delhi", "New York City"]
    score = score_options(content, options, likelihoods=[-1.0, -2.0, -3.0])
    assert score.scoring == "likelihood"
    assert score.answer == "New York"
    # P("New York") includes P("New York City"): the part that does not continue is what's left.
    expected_ny = math.log(math.exp(-1.0) - math.exp(-3.0))
    assert score.option_logprobs == pytest.approx((expected_ny, -2.0, -3.0))
    assert score.truncated == (False, False, False)
    assert score.probs().sum() == pytest.approx(1.0)


def test_likelihoods_do_not_score_an_answer_that_names_no_option() -> None:
    content = [step(" Q", -0.2), step(".", -0.1)]
    score = score_options(content, ["Quito", "Lima"], likelihoods=[-1.0, -2.0])
    assert score.answer is None
    assert score.option_logprobs == ()


def test_likelihoods_must_have_one_value_per_option() -> None:
    with pytest.raises(ValueError, match="one value per option"):
        score_options([step(" Lima", -0.1)], ["Lima", "Quito"], likelihoods=[-1.0])
