"""The sequence signals (`SequenceScore.signals`), each checked against a hand computation."""

from __future__ import annotations

import math

import pytest

from calibrators import SEQUENCE_SIGNALS, SequenceScore, score_sequence


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _chat(entries: list[tuple[str, float, list[tuple[str, float]] | None]]) -> dict:
    return {
        "content": [
            {
                "token": token,
                "logprob": lp,
                "top_logprobs": [{"token": t, "logprob": v} for t, v in top or ()],
            }
            for token, lp, top in entries
        ]
    }


# " Paris" p=0.8 (runner-up " Lyon" p=0.1), "," p=0.5, "\n" p=0.9
PARIS = _chat(
    [
        (" Paris", math.log(0.8), [(" Paris", math.log(0.8)), (" Lyon", math.log(0.1))]),
        (",", math.log(0.5), [(",", math.log(0.5)), (".", math.log(0.3))]),
        ("\n", math.log(0.9), [("\n", math.log(0.9))]),
    ]
)


def test_each_signal_is_its_hand_computed_value() -> None:
    signals = score_sequence(PARIS).signals()
    assert set(signals) == set(SEQUENCE_SIGNALS)
    assert signals["first_token_logit"] == pytest.approx(_logit(0.8))
    assert signals["min_token_logit"] == pytest.approx(_logit(0.5))
    assert signals["joint_logit"] == pytest.approx(_logit(0.8 * 0.5 * 0.9))
    assert signals["first_margin"] == pytest.approx(math.log(0.8) - math.log(0.1))
    assert signals["n_tokens"] == 3.0


def test_the_raw_confidence_stays_the_geometric_mean() -> None:
    score = score_sequence(PARIS)
    assert score.raw_confidence == pytest.approx((0.8 * 0.5 * 0.9) ** (1 / 3))
    assert score.sum_logprob == pytest.approx(math.log(0.36))
    assert score.first_logprob == pytest.approx(math.log(0.8))


def test_legacy_completions_give_the_same_signals() -> None:
    legacy = {
        "tokens": [" Paris", ",", "\n"],
        "token_logprobs": [math.log(0.8), math.log(0.5), math.log(0.9)],
        "top_logprobs": [
            {" Paris": math.log(0.8), " Lyon": math.log(0.1)},
            {",": math.log(0.5)},
            {"\n": math.log(0.9)},
        ],
    }
    assert score_sequence(legacy).signals() == pytest.approx(score_sequence(PARIS).signals())


def test_margin_counts_a_sampled_token_the_list_leaves_out() -> None:
    # Sampling picked " Rome" (p=0.05), not among the listed top-2: the margin is still the
    # distribution's top-2 gap (0.6 vs 0.3), and the sampled token cannot widen it.
    logprobs = _chat(
        [(" Rome", math.log(0.05), [(" Paris", math.log(0.6)), (" Lyon", math.log(0.3))])]
    )
    assert score_sequence(logprobs).signals()["first_margin"] == pytest.approx(math.log(2.0))
    # Only one candidate listed, the sampled one: with a second (unlisted) sampled token there
    # are two values again.
    alone = _chat([(" Rome", math.log(0.2), [(" Paris", math.log(0.7))])])
    assert score_sequence(alone).signals()["first_margin"] == pytest.approx(math.log(3.5))


def test_a_tie_at_the_top_has_margin_zero() -> None:
    tie = _chat([(" A", math.log(0.4), [(" A", math.log(0.4)), (" B", math.log(0.4))])])
    assert score_sequence(tie).signals()["first_margin"] == 0.0


def test_without_top_logprobs_the_margin_is_missing_and_the_rest_is_there() -> None:
    # The gateway asks for no top-K in sequence mode: only the sampled tokens' logprobs.
    plain = {"content": [{"token": " Paris", "logprob": math.log(0.8), "top_logprobs": []}]}
    signals = score_sequence(plain).signals()
    assert "first_margin" not in signals
    assert signals["first_token_logit"] == pytest.approx(_logit(0.8))
    assert signals["joint_logit"] == signals["min_token_logit"] == signals["first_token_logit"]
    assert signals["n_tokens"] == 1.0


def test_tokens_without_a_logprob_are_skipped_by_every_signal() -> None:
    logprobs = {
        "tokens": ["<s>", " Lima", "\n"],
        "token_logprobs": [None, math.log(0.5), math.log(0.25)],
        "top_logprobs": [None, {" Lima": math.log(0.5), " Cusco": math.log(0.125)}, None],
    }
    signals = score_sequence(logprobs).signals()
    assert signals["first_token_logit"] == pytest.approx(0.0)  # p = 0.5 → logit 0
    assert signals["first_margin"] == pytest.approx(math.log(4.0))
    assert signals["joint_logit"] == pytest.approx(_logit(0.125))
    assert signals["n_tokens"] == 2.0


def test_a_certain_token_is_clipped_not_infinite() -> None:
    signals = score_sequence({"content": [{"token": "x", "logprob": 0.0}]}).signals()
    assert all(math.isfinite(v) for v in signals.values())
    assert signals["first_token_logit"] == pytest.approx(_logit(1 - 1e-6))


def test_no_tokens_no_signals() -> None:
    assert score_sequence(None).signals() == {}
    assert SequenceScore(None, None, 0).signals() == {}
