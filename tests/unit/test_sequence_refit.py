"""Refit chooses among the sequence signals by held-out NLL (synthetic answers, known truth).

Each synthetic answer is a list of token logprobs scored by `score_sequence` (the gateway's own
function), so the signals the refit sees are the ones a served answer would record.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from calibrators import SEQUENCE_FEATURE_SETS, SEQUENCE_SIGNALS, Profile, score_sequence
from calibrators.refit import LabeledSet, RefitPolicy, refit_profile

POLICY = RefitPolicy(feature_sets=SEQUENCE_FEATURE_SETS)
MULTI = "logistic:" + "+".join(SEQUENCE_FEATURE_SETS[-1])


def _answers(n: int, seed: int) -> tuple[list[list[float]], np.ndarray]:
    """Token logprobs of `n` answers (2–6 tokens; the first token's probability spread widely,
    the later ones mostly high) and each answer's first-token probability."""
    rng = np.random.default_rng(seed)
    out, first = [], []
    for _ in range(n):
        length = int(rng.integers(2, 7))
        p = [rng.uniform(0.05, 0.99), *rng.uniform(0.4, 1.0, size=length - 1)]
        out.append([math.log(v) for v in p])
        first.append(p[0])
    return out, np.asarray(first)


def _labeled(lps: list[list[float]], correct: np.ndarray) -> LabeledSet:
    scores = [
        score_sequence({"content": [{"token": f"t{i}", "logprob": v} for i, v in enumerate(seq)]})
        for seq in lps
    ]
    return LabeledSet(
        ids=[f"cmpl-{i}" for i in range(len(scores))],
        mode="sequence",
        correct=correct.astype(float),
        raw_confidence=np.array([s.raw_confidence for s in scores]),
        signals={
            name: np.array([s.signals().get(name, np.nan) for s in scores])
            for name in SEQUENCE_SIGNALS
        },
    )


def _draw(z: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1000).uniform(size=z.size) < expit(z)


def test_refit_picks_the_first_token_signal_when_correctness_follows_it() -> None:
    lps, first = _answers(3000, seed=1)
    correct = _draw(2.0 * np.log(first / (1 - first)), seed=1)
    result = refit_profile(_labeled(lps, correct), Profile.identity("m"), POLICY)
    chosen = result.metrics["chosen"]
    assert chosen in ("logistic:first_token_logit", MULTI), result.reason
    assert result.candidate is not None and result.candidate.method == "logistic"
    assert "first_token_logit" in result.candidate.calibrator["features"]
    nll = result.metrics["heldout_nll"]
    assert nll[chosen] < nll["platt"] - 0.02  # clearly better than exp(mean logprob) alone
    assert result.reason.startswith(f"{chosen} held-out NLL")
    # first_margin needs top-K logprobs, which these answers lack: no candidate over it.
    assert "logistic:first_margin" not in nll


def test_refit_picks_the_multi_feature_map_when_two_signals_matter() -> None:
    lps, first = _answers(3000, seed=2)
    length = np.array([len(seq) for seq in lps], dtype=float)
    # Right more often with a confident first token, and less often the longer the answer.
    correct = _draw(1.5 * np.log(first / (1 - first)) - 1.2 * (length - 4), seed=2)
    result = refit_profile(_labeled(lps, correct), Profile.identity("m"), POLICY)
    assert result.metrics["chosen"] == MULTI, result.metrics["heldout_nll"]
    nll = result.metrics["heldout_nll"]
    singles = [name for name in nll if name.startswith("logistic:") and name != MULTI]
    assert singles and all(nll[MULTI] < nll[name] for name in [*singles, "platt"])
    assert result.activate and MULTI in result.reason


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_refit_keeps_platt_when_the_geometric_mean_is_what_matters(seed: int) -> None:
    lps, _ = _answers(600, seed=seed)
    mean = np.array([np.mean(seq) for seq in lps])
    raw = np.exp(mean)
    correct = _draw(1.5 * np.log(raw / (1 - raw)) - 0.5, seed=seed)
    result = refit_profile(_labeled(lps, correct), Profile.identity("m"), POLICY)
    assert result.metrics["chosen"] == "platt", result.metrics["heldout_nll"]
    assert result.candidate is not None and result.candidate.method == "platt"
    selection = result.metrics.get("selection")
    if selection is not None:  # a logistic map had the lowest NLL, by less than its noise
        nll = result.metrics["heldout_nll"]
        assert selection["best_nll"].startswith("logistic:")
        assert nll[selection["best_nll"]] < nll["platt"]
        assert 0 < selection["gain"] <= selection["se"]
        assert "one standard error" in result.reason
