"""score_options / score_sequence on the chat and legacy logprob shapes (docs/architecture.md,
"Confidence math")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibrators import OptionScore, SequenceScore, normalize_token, score_options, score_sequence

LETTERS = ["A", "B", "C", "D"]


def chat_step(token: str, logprob: float, top: dict[str, float]) -> dict:
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()
        ],
    }


def lse(*values: float) -> float:
    return float(np.logaddexp.reduce(values))


# A hand-written response in the exact shape vLLM's OpenAI server returns for
# `logprobs=true, top_logprobs=5` on "Answer with the letter only." -> "The answer is (B)."
VLLM_CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gemma-3-270m",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The answer is (B)."},
            "logprobs": {
                "content": [
                    chat_step("The", -0.9, {"The": -0.9, "B": -1.2, "**": -2.0, "(": -2.5}),
                    chat_step(" answer", -0.05, {" answer": -0.05, " correct": -3.1}),
                    chat_step(" is", -0.01, {" is": -0.01, ":": -4.6}),
                    chat_step(
                        " (",
                        -0.7,
                        {" (": -0.7, " B": -1.3, " **": -2.2, " A": -3.0, " C": -4.0},
                    ),
                    chat_step(
                        "B",
                        -0.35,
                        {"B": -0.35, "A": -1.9, "C": -2.9, "b": -3.5, "D": -4.2},
                    ),
                    chat_step(").", -0.02, {").": -0.02, ")": -4.0}),
                ]
            },
            "finish_reason": "stop",
        }
    ],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" B", "B"),
        ("B", "B"),
        ("(B", "B"),
        ("B.", "B"),
        ("(B):", "B"),
        ("\u2581B", "B"),
        ("\u0120B", "B"),
        ("\nB ", "B"),
        (" Burkina Faso", "Burkina Faso"),
        ("b", "b"),
        (" (", ""),
    ],
)
def test_normalize_token_strips_spaces_parentheses_dots_colons_and_space_markers(
    text: str, expected: str
) -> None:
    assert normalize_token(text) == expected


def test_chat_shape_finds_the_first_token_that_names_an_option() -> None:
    score = score_options(VLLM_CHAT_RESPONSE["choices"][0]["logprobs"], LETTERS)
    assert score.found
    assert score.answer == "B"
    assert score.answer_index == 1
    assert score.position == 4


def test_option_logprobs_are_read_at_the_answer_position() -> None:
    score = score_options(VLLM_CHAT_RESPONSE["choices"][0]["logprobs"], LETTERS)
    assert score.option_logprobs[:3] == pytest.approx((-1.9, -0.35, -2.9))
    assert score.option_logprobs[3] == pytest.approx(-4.2)
    assert score.truncated == (False, False, False, False)


def test_lowercase_variant_is_not_the_option() -> None:
    # "b" at -3.5 must not be folded into "B": matching is case-sensitive.
    score = score_options(VLLM_CHAT_RESPONSE["choices"][0]["logprobs"], LETTERS)
    assert score.option_logprobs[1] == pytest.approx(-0.35)


def test_whole_choice_content_list_and_logprobs_object_give_the_same_score() -> None:
    choice = VLLM_CHAT_RESPONSE["choices"][0]
    a = score_options(choice, LETTERS)
    b = score_options(choice["logprobs"], LETTERS)
    c = score_options(choice["logprobs"]["content"], LETTERS)
    assert a == b == c


def test_variants_space_paren_and_dot_are_log_sum_exped() -> None:
    content = [chat_step(" B", -1.0, {" B": -1.0, "B": -2.0, "(B": -3.0, "B.": -4.0, " A": -1.5})]
    score = score_options(content, LETTERS)
    assert score.option_logprobs[1] == pytest.approx(lse(-1.0, -2.0, -3.0, -4.0))
    assert score.option_logprobs[0] == pytest.approx(-1.5)


def test_option_missing_from_top_k_gets_the_smallest_top_k_logprob_and_is_flagged() -> None:
    content = [chat_step("A", -0.1, {"A": -0.1, "B": -2.5, "C": -3.0, "Hmm": -6.0})]
    score = score_options(content, LETTERS)
    assert score.option_logprobs[3] == pytest.approx(-6.0)
    assert score.truncated == (False, False, False, True)


def test_sampled_token_counts_even_when_missing_from_top_logprobs() -> None:
    # Sampled at temperature > 0: the chosen token is not among the top-3 listed.
    content = [chat_step(" D", -5.0, {" A": -0.2, " B": -2.0, " C": -3.0})]
    score = score_options(content, LETTERS)
    assert score.answer == "D"
    assert score.option_logprobs[3] == pytest.approx(-5.0)
    assert not score.truncated[3]


def test_sampled_token_listed_in_top_logprobs_is_not_counted_twice() -> None:
    content = [chat_step("A", -0.5, {"A": -0.5, "B": -1.0})]
    score = score_options(content, ["A", "B"])
    assert score.option_logprobs == pytest.approx((-0.5, -1.0))


def test_no_option_in_the_answer_gives_answer_none() -> None:
    content = [chat_step("I", -0.1, {"I": -0.1}), chat_step(" don't", -0.2, {" don't": -0.2})]
    score = score_options(content, LETTERS)
    assert score.answer is None
    assert score.answer_index is None
    assert score.position is None
    assert not score.found
    assert score.raw_confidence is None
    assert score.probs().size == 0


@pytest.mark.parametrize(
    "empty", [None, {}, [], {"content": None}, {"content": []}, {"tokens": []}, {"logprobs": None}]
)
def test_missing_or_empty_logprobs_never_raise(empty: object) -> None:
    assert score_options(empty, LETTERS).answer is None
    seq = score_sequence(empty)
    assert seq.n_tokens == 0
    assert seq.raw_confidence is None


def test_legacy_completions_shape_is_read_like_the_chat_shape() -> None:
    legacy = {
        "tokens": [" The", " answer", ":", " C"],
        "token_logprobs": [-0.5, -0.1, -0.2, -0.4],
        "top_logprobs": [
            {" The": -0.5},
            {" answer": -0.1},
            {":": -0.2, " is": -1.8},
            {" C": -0.4, " A": -1.5, "C": -2.5, " B": -3.5},
        ],
        "text_offset": [0, 4, 11, 12],
    }
    score = score_options(legacy, LETTERS)
    assert score.answer == "C"
    assert score.position == 3
    assert score.option_logprobs[:3] == pytest.approx((-1.5, -3.5, lse(-0.4, -2.5)))
    assert score.truncated == (False, False, False, True)
    assert score.option_logprobs[3] == pytest.approx(-3.5)


def test_legacy_shape_with_echoed_prompt_none_logprob_is_skipped_by_sequence() -> None:
    legacy = {"tokens": ["Q", " yes"], "token_logprobs": [None, -0.3], "top_logprobs": [None, {}]}
    seq = score_sequence(legacy)
    assert seq.n_tokens == 1
    assert seq.mean_logprob == pytest.approx(-0.3)


def test_arbitrary_string_options_match_their_normalized_label() -> None:
    content = [
        chat_step("The", -0.3, {"The": -0.3}),
        chat_step(" capital", -0.1, {" capital": -0.1}),
        chat_step(" is", -0.1, {" is": -0.1}),
        chat_step(" Paris", -0.2, {" Paris": -0.2, " Lyon": -2.0, "Paris": -3.0, " Nice": -4.0}),
    ]
    score = score_options(content, [" Paris", " Lyon", " Marseille"])
    assert score.answer == " Paris"
    assert score.position == 3
    assert score.option_logprobs[0] == pytest.approx(lse(-0.2, -3.0))
    assert score.option_logprobs[1] == pytest.approx(-2.0)
    assert score.truncated == (False, False, True)


def test_a_multi_token_option_sums_its_token_logprobs_from_its_first_token() -> None:
    content = [
        chat_step(" Burk", -0.4, {" Burk": -0.4, " Mali": -1.3, " Niger": -2.2}),
        chat_step("ina", -0.01, {"ina": -0.01}),
        chat_step(" Faso", -0.01, {" Faso": -0.01}),
    ]
    score = score_options(content, ["Burkina Faso", "Mali", "Niger"])
    assert score.answer == "Burkina Faso"
    assert score.position == 0
    # The whole sequence's probability (sum), the others where they depart from the path.
    assert score.option_logprobs == pytest.approx((-0.42, -1.3, -2.2))
    assert score.scoring == "path"


def test_a_shared_first_token_is_followed_to_where_the_options_depart() -> None:
    content = [
        chat_step(" Bur", -0.5, {" Bur": -0.5, " Mali": -1.0}),
        chat_step("undi", -0.1, {"undi": -0.1, "kina": -2.5}),
        chat_step(" Mali", -3.0, {" Mali": -3.0, ".": -0.2}),
    ]
    score = score_options(content, ["Burkina Faso", "Burundi", "Mali"])
    # " Bur" + "undi" spells Burundi, ending at a token boundary: that is the answer.
    assert score.answer == "Burundi"
    assert score.position == 0
    # Burkina Faso shares " Bur" and departs at "kina"; Mali departs at the first token.
    assert score.option_logprobs == pytest.approx((-0.5 - 2.5, -0.6, -1.0))
    assert score.truncated == (False, False, False)


def test_a_listed_start_shared_by_two_options_is_split_between_them() -> None:
    content = [chat_step(" Burundi", -0.7, {" Burundi": -0.7, " Bur": -0.9, " Mali": -1.0})]
    score = score_options(content, ["Burundi", "Mali", "Burkina Faso"])
    assert score.answer == "Burundi"
    # " Bur" starts both Burundi and Burkina Faso (disjoint from " Burundi"): half to each.
    half = -0.9 - math.log(2)
    assert score.option_logprobs == pytest.approx((np.logaddexp(-0.7, half), -1.0, half))
    assert score.truncated == (True, False, True)


def test_every_listed_prefix_of_a_departing_option_adds_to_it() -> None:
    # Guided decoding lists only the options' prefixes, each with its (renormalized) mass.
    content = [
        chat_step(
            " M", -1.11, {" M": -1.11, " Mb": -1.49, " N": -2.36, " Ni": -6.99, " Nia": -16.45}
        ),
        chat_step("babane", -0.05, {"babane": -0.05}),
    ]
    score = score_options(content, ["Mbabane", "Niamey"])
    assert score.answer == "Mbabane"
    niamey = float(np.logaddexp.reduce([-2.36, -6.99, -16.45]))
    mbabane = float(np.logaddexp(-1.11 - 0.05, -1.49))
    assert score.option_logprobs == pytest.approx((mbabane, niamey))
    assert not any(score.truncated)


def test_probs_are_the_softmax_of_option_logprobs_at_temperature() -> None:
    score = OptionScore(("A", "B", "C"), (-0.2, -1.9, -3.0), (False,) * 3, "A", 0, 0)
    logits = np.array([-0.2, -1.9, -3.0]) / 2.5
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(score.probs(2.5), expected, rtol=1e-12)
    assert score.raw_confidence == pytest.approx(
        math.exp(-0.2) / (math.exp(-0.2) + math.exp(-1.9) + math.exp(-3.0))
    )


def test_sequence_score_is_mean_and_min_of_token_logprobs() -> None:
    seq = score_sequence(VLLM_CHAT_RESPONSE["choices"][0]["logprobs"])
    lps = [-0.9, -0.05, -0.01, -0.7, -0.35, -0.02]
    assert seq.n_tokens == 6
    assert seq.mean_logprob == pytest.approx(np.mean(lps))
    assert seq.min_logprob == pytest.approx(min(lps))
    assert seq.raw_confidence == pytest.approx(math.exp(np.mean(lps)))


def test_sequence_score_of_no_tokens_has_no_confidence() -> None:
    assert SequenceScore(None, None, 0).raw_confidence is None


def test_an_exact_label_wins_over_a_prefix_of_a_longer_option() -> None:
    content = [chat_step("A", -0.4, {"A": -0.4, "All": -1.5, "B": -2.0})]
    score = score_options(content, ["A", "B", "All of the above"])
    assert score.answer == "A"
    assert score.option_logprobs == pytest.approx((-0.4, -2.0, -1.5))


def test_without_a_top_k_list_absent_options_are_bounded_by_the_mass_left_over() -> None:
    content = [{"token": "B", "logprob": math.log(0.7), "top_logprobs": []}]
    score = score_options(content, ["A", "B"])
    assert score.option_logprobs == pytest.approx((math.log(0.3), math.log(0.7)))
    assert score.truncated == (True, False)


def test_vllm_masked_logprob_means_impossible_not_a_very_small_number() -> None:
    # Guided decoding: fewer allowed tokens than K, the rest listed at vLLM's -9999 (-inf).
    content = [chat_step("A", -0.2, {"A": -0.2, "B": -1.7, "Hmm": -9999.0, "x": -9999.0})]
    score = score_options(content, LETTERS)
    assert score.option_logprobs[:2] == pytest.approx((-0.2, -1.7))
    assert score.option_logprobs[2:] == (-math.inf, -math.inf)
