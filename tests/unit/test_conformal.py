"""Split-conformal prediction sets (LAC): scores, the quantile table, the sets, the refit fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibrators import (
    ConformalTable,
    Profile,
    conformal_scores,
    fit_conformal,
    prediction_set,
)
from calibrators.refit import LabeledSet, RefitPolicy, refit_profile


def test_scores_use_the_true_option_and_bound_unknown_wrong_answers() -> None:
    probs = np.array([[0.7, 0.2, 0.1, 0.0], [0.5, 0.3, 0.2, 0.0], [0.6, 0.4, 0.0, 0.0]])
    # Row 0: label known (B). Row 1: right answer (A) known only as correct. Row 2: wrong
    # answer (A) without a label: the only other real option is B.
    scores = conformal_scores(probs, [1, -1, -1], chosen=[0, 0, 0], correct=[0, 1, 0])
    assert scores == pytest.approx([0.8, 0.5, 0.6])
    # Several other options: the largest possible score (the least probable real option).
    wrong = conformal_scores(probs[1:2], [-1], chosen=[0], correct=[0])
    assert wrong == pytest.approx([0.8])
    with pytest.raises(ValueError, match="chosen"):
        conformal_scores(probs, [-1, -1, -1])


def test_quantile_is_the_ceil_n_plus_one_order_statistic() -> None:
    scores = np.arange(1, 20) / 20.0  # n = 19 distinct scores
    table = fit_conformal(scores)
    assert table.n == 19 and len(table.scores) == 19
    # ceil(20 * 0.9) = 18 -> the 18th smallest.
    assert table.quantile(0.9) == pytest.approx(18 / 20)
    assert table.quantile(0.5) == pytest.approx(10 / 20)
    # ceil(20 * 0.96) = 20 > n: no finite quantile, every option.
    assert math.isinf(table.quantile(0.96))
    with pytest.raises(ValueError):
        table.quantile(1.0)


def test_a_compact_table_never_gives_a_smaller_quantile_than_the_exact_one() -> None:
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=5003)
    exact, compact = fit_conformal(scores, max_points=10**9), fit_conformal(scores, 200)
    assert len(compact.scores) == 200
    ordered = np.sort(scores)
    for coverage in np.linspace(0.01, 0.99, 99):
        q_exact, q_compact = exact.quantile(coverage), compact.quantile(coverage)
        needed = math.ceil((5003 + 1) * coverage - 1e-12)
        assert q_exact == ordered[needed - 1]
        assert q_exact <= q_compact
        # At most n / m ranks above the exact one.
        assert np.searchsorted(ordered, q_compact, side="right") - needed <= math.ceil(5003 / 200)
    assert ConformalTable.from_dict(compact.to_dict()) == compact


def test_prediction_set_orders_by_probability_and_is_never_empty() -> None:
    probs = {"A": 0.1, "B": 0.6, "C": 0.25, "D": 0.05}
    assert prediction_set(probs, 0.8) == ["B", "C"]
    assert prediction_set(probs, 0.95) == ["B", "C", "A", "D"]
    assert prediction_set(probs, 0.1) == ["B"]  # nothing passes: the top option alone
    assert prediction_set(probs, math.inf) == ["B", "C", "A", "D"]


def _options_data(n: int, seed: int, true_t: float = 2.0) -> tuple[LabeledSet, np.ndarray]:
    """An overconfident model: truths from softmax(z / true_t), logprobs log_softmax(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.5, size=(n, 4))
    logprobs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p_true = np.exp(z / true_t)
    p_true /= p_true.sum(axis=1, keepdims=True)
    labels = np.minimum((rng.uniform(size=(n, 1)) > np.cumsum(p_true, axis=1)).sum(axis=1), 3)
    chosen = logprobs.argmax(axis=1)
    data = LabeledSet(
        ids=[f"item-{seed}-{i}" for i in range(n)],
        mode="options",
        correct=(labels == chosen).astype(float),
        option_logprobs=logprobs,
        labels=labels.astype(np.int64),
        chosen=chosen.astype(np.int64),
    )
    return data, logprobs


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_refit_fits_sets_that_cover_fresh_items(target: float) -> None:
    data, _ = _options_data(6000, seed=11)
    result = refit_profile(data, Profile.identity("m"), RefitPolicy(min_labels=50))
    profile = result.candidate
    assert profile is not None and profile.conformal is not None
    table = profile.conformal_table
    assert table is not None and table.n == result.metrics["n_heldout"]
    assert result.metrics["conformal"]["n"] == table.n

    fresh, logprobs = _options_data(20000, seed=12)
    temperature = profile.calibrator["temperature"]  # type: ignore[index]
    scaled = logprobs / temperature
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    q = table.quantile(target)
    covered, sizes = 0, 0
    for row, label in zip(probs, fresh.labels, strict=True):
        chosen = prediction_set({"ABCD"[i]: float(p) for i, p in enumerate(row)}, q)
        covered += "ABCD"[label] in chosen
        sizes += len(chosen)
    coverage = covered / len(probs)
    assert target - 0.02 <= coverage <= target + 0.04
    assert sizes / len(probs) < 4


def test_sequence_refits_fit_no_sets() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(size=300)
    data = LabeledSet(
        ids=[f"s{i}" for i in range(300)],
        mode="sequence",
        correct=(rng.uniform(size=300) < raw).astype(float),
        raw_confidence=raw,
    )
    result = refit_profile(data, Profile.identity("m", "t"), RefitPolicy(min_labels=50))
    assert result.candidate is not None and result.candidate.conformal is None
    assert "conformal" not in result.metrics


def test_profile_round_trips_its_conformal_table() -> None:
    table = fit_conformal([0.1, 0.2, 0.3])
    profile = Profile("m", conformal=table.to_dict())
    again = Profile.from_dict(profile.to_dict())
    assert again.conformal_table == table
    assert Profile("m").conformal_table is None
