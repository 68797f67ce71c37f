"""Abstain threshold: Learn-Then-Test validity by simulation, and the coverage target."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binom

from calibrators import ThresholdChoice, select_threshold


def well_specified(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated confidences: conf ~ Beta(4, 1.5), correct ~ Bernoulli(conf)."""
    rng = np.random.default_rng(seed)
    conf = rng.beta(4.0, 1.5, n)
    return conf, (rng.random(n) < conf).astype(int)


@pytest.mark.parametrize(("alpha", "delta", "p_value"), [(0.1, 0.1, "binomial"), (0.1, 0.2, "hb")])
def test_ltt_keeps_test_risk_below_target_in_at_least_1_minus_delta_of_splits(
    alpha: float, delta: float, p_value: str
) -> None:
    conf, correct = well_specified(60_000, seed=0)
    rng = np.random.default_rng(1)
    n_cal, trials, certified, valid = 2000, 500, 0, 0
    for _ in range(trials):
        order = rng.permutation(conf.size)
        cal, test = order[:n_cal], order[n_cal:]
        choice = select_threshold(conf[cal], correct[cal], alpha, delta, p_value=p_value)
        if not choice.guaranteed:
            continue
        certified += 1
        answered = conf[test] >= choice.threshold
        test_risk = 1.0 - correct[test][answered].mean()
        valid += test_risk <= alpha
    assert certified >= 0.5 * trials  # the simulation is informative: LTT usually certifies
    assert valid >= (1 - delta) * certified


def first_tested_n(alpha: float, delta: float) -> int:
    """Smallest n where an observed risk of alpha/2 would pass the exact binomial test."""
    n = 1
    while binom.cdf(math.floor(n * alpha / 2), n, alpha) > delta:
        n += 1
    return n


def test_ltt_matches_a_brute_force_fixed_sequence_test() -> None:
    conf, correct = well_specified(3000, seed=2)
    conf = np.round(conf, 3)  # ties and < 1000 distinct values: every value is a candidate
    alpha, delta = 0.1, 0.1
    n_start = first_tested_n(alpha, delta)
    chosen = None
    for lam in sorted(set(conf), reverse=True):
        answered = conf >= lam
        n = int(answered.sum())
        if n < n_start:
            continue
        errors = int((1 - correct[answered]).sum())
        if binom.cdf(errors, n, alpha) > delta:
            break
        chosen = lam
    choice = select_threshold(conf, correct, alpha, delta)
    assert chosen is not None
    assert choice.guaranteed
    assert choice.threshold == pytest.approx(chosen)
    answered = conf >= chosen
    assert choice.coverage == pytest.approx(answered.mean())
    assert choice.risk == pytest.approx(1 - correct[answered].mean())
    assert choice.risk <= alpha


def test_when_nothing_can_be_certified_it_abstains_on_everything() -> None:
    conf, _ = well_specified(2000, seed=3)
    correct = np.zeros(2000, dtype=int)  # every answer wrong
    choice = select_threshold(conf, correct, target_risk=0.1, delta=0.1)
    assert not choice.guaranteed
    assert choice.coverage == 0.0
    assert choice.threshold > 1.0
    assert choice.threshold > conf.max()


def test_too_few_items_cannot_be_certified() -> None:
    # 10 correct answers: P(10 successes | risk 0.1) = 0.9**10 = 0.35 > delta.
    choice = select_threshold(np.linspace(0.9, 0.99, 10), np.ones(10), 0.1, 0.1)
    assert not choice.guaranteed
    assert choice.coverage == 0.0


def test_hoeffding_bentkus_is_more_conservative_than_the_exact_binomial() -> None:
    conf, correct = well_specified(3000, seed=4)
    exact = select_threshold(conf, correct, 0.1, 0.1, p_value="binomial")
    hb = select_threshold(conf, correct, 0.1, 0.1, p_value="hb")
    assert hb.guaranteed and exact.guaranteed
    assert hb.threshold >= exact.threshold


def test_coverage_method_answers_at_least_the_target_share_without_a_guarantee() -> None:
    conf, correct = well_specified(1001, seed=5)
    choice = select_threshold(conf, correct, method="coverage", target_coverage=0.8)
    assert not choice.guaranteed
    assert choice.method == "coverage"
    assert choice.coverage >= 0.8
    assert (conf >= choice.threshold).sum() == math.ceil(0.8 * 1001)


def test_coverage_method_needs_a_target() -> None:
    with pytest.raises(ValueError):
        select_threshold([0.5], [1], method="coverage")


def test_choice_round_trips_through_json() -> None:
    conf, correct = well_specified(2000, seed=6)
    choice = select_threshold(conf, correct)
    data = json.loads(json.dumps(choice.to_dict(), allow_nan=False))
    assert ThresholdChoice(**data) == choice
    assert data["n"] == 2000
    assert data["method"] == "ltt"
