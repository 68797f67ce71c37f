"""FeatureLogistic: the multi-feature calibrator, its place in refit and in apply_profile."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy.special import expit

from calibrators import (
    CONFIDENCE_LOGIT,
    FeatureLogistic,
    PlattScaler,
    Profile,
    SequenceScore,
    apply_profile,
    confidence_logit,
)
from calibrators.refit import LabeledSet, RefitPolicy, refit_profile
from service.refit.dataset import build_labeled_set
from service.store import LabeledRow


def _two_signal_data(n: int, seed: int, reliance_matters: bool) -> tuple[np.ndarray, np.ndarray]:
    """Raw confidence plus a second signal; correctness depends on both (or on the first only)."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.2, 0.95, size=n)
    reliance = rng.uniform(0, 1, size=n)
    z = 1.2 * confidence_logit(raw) + (3.0 * (reliance - 0.5) if reliance_matters else 0.0)
    correct = (rng.uniform(size=n) < expit(z)).astype(float)
    return np.column_stack([raw, reliance]), correct


def test_recovers_the_generating_coefficients() -> None:
    x, y = _two_signal_data(20000, seed=1, reliance_matters=True)
    features = np.column_stack([confidence_logit(x[:, 0]), x[:, 1]])
    model = FeatureLogistic([CONFIDENCE_LOGIT, "visual_reliance"], l2=0.0).fit(features, y)
    # Coefficients are on standardized columns: scale back to the raw ones.
    raw_coef = model.coef_ / model.scale_
    assert raw_coef == pytest.approx([1.2, 3.0], rel=0.1)


def test_predict_row_matches_predict_proba_and_survives_a_round_trip() -> None:
    x, y = _two_signal_data(500, seed=2, reliance_matters=True)
    features = np.column_stack([confidence_logit(x[:, 0]), x[:, 1]])
    model = FeatureLogistic([CONFIDENCE_LOGIT, "visual_reliance"]).fit(features, y)
    rebuilt = FeatureLogistic.from_dict(model.to_dict())
    batch = rebuilt.predict_proba(features[:20])
    for row, expected in zip(features[:20], batch, strict=True):
        one = rebuilt.predict_row({CONFIDENCE_LOGIT: row[0], "visual_reliance": row[1]})
        assert one == pytest.approx(expected, abs=1e-12)
    assert model.to_dict()["type"] == "logistic"


def test_a_missing_signal_takes_its_training_mean() -> None:
    x, y = _two_signal_data(500, seed=3, reliance_matters=True)
    features = np.column_stack([confidence_logit(x[:, 0]), x[:, 1]])
    model = FeatureLogistic([CONFIDENCE_LOGIT, "visual_reliance"]).fit(features, y)
    mean = float(model.mean_[1])
    with_mean = model.predict_row({CONFIDENCE_LOGIT: 0.3, "visual_reliance": mean})
    assert model.predict_row({CONFIDENCE_LOGIT: 0.3}) == pytest.approx(with_mean)
    assert model.predict_row({CONFIDENCE_LOGIT: 0.3, "visual_reliance": math.nan}) == (
        pytest.approx(with_mean)
    )
    # NaN at fit time is imputed too: a column half missing still fits and predicts finitely.
    holes = features.copy()
    holes[::2, 1] = np.nan
    fitted = FeatureLogistic([CONFIDENCE_LOGIT, "visual_reliance"]).fit(holes, y)
    assert np.all(np.isfinite(fitted.predict_proba(holes)))


def test_one_class_or_separable_labels_stay_finite() -> None:
    features = np.column_stack([np.linspace(-3, 3, 50), np.linspace(0, 1, 50)])
    separable = (features[:, 0] > 0).astype(float)
    for y in (np.ones(50), separable):
        model = FeatureLogistic(["a", "b"]).fit(features, y)
        assert np.all(np.isfinite(model.coef_)) and math.isfinite(model.intercept_)


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError):
        FeatureLogistic([])
    with pytest.raises(ValueError):
        FeatureLogistic(["a", "a"])
    with pytest.raises(RuntimeError):
        FeatureLogistic(["a"]).predict_row({"a": 1.0})


def _sequence_set(n: int, seed: int, reliance_matters: bool) -> LabeledSet:
    x, y = _two_signal_data(n, seed, reliance_matters)
    return LabeledSet(
        ids=[f"cmpl-{seed}-{i}" for i in range(n)],
        mode="sequence",
        correct=y,
        raw_confidence=x[:, 0],
        signals={"visual_reliance": x[:, 1]},
    )


POLICY = RefitPolicy(feature_sets=((CONFIDENCE_LOGIT, "visual_reliance"),))


def test_refit_keeps_the_logistic_map_only_when_the_signal_helps() -> None:
    helps = refit_profile(_sequence_set(4000, 4, True), Profile.identity("m"), POLICY)
    assert helps.candidate is not None and helps.candidate.method == "logistic", helps.reason
    assert helps.metrics["chosen"] == "logistic:confidence_logit+visual_reliance"
    nll = helps.metrics["heldout_nll"]
    assert nll["logistic:confidence_logit+visual_reliance"] < nll["platt"]

    noise = refit_profile(_sequence_set(4000, 5, False), Profile.identity("m"), POLICY)
    # Pure noise as a second feature: Platt's single feature is (at worst) as good held-out.
    nll = noise.metrics["heldout_nll"]
    assert nll["platt"] <= nll["logistic:confidence_logit+visual_reliance"] + 1e-3


def test_refit_skips_a_feature_set_whose_signal_the_labels_do_not_carry() -> None:
    data = _sequence_set(400, 6, True)
    bare = LabeledSet(data.ids, data.mode, data.correct, raw_confidence=data.raw_confidence)
    result = refit_profile(bare, Profile.identity("m"), POLICY)
    assert not any(name.startswith("logistic") for name in result.metrics["heldout_nll"])


def test_options_refit_with_a_logistic_candidate_judges_everyone_on_binary_nll() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    logprobs = np.log(rng.dirichlet(np.ones(4) * 0.7, size=n))
    chosen = logprobs.argmax(axis=1)
    reliance = rng.uniform(0, 1, size=n)
    top = np.exp(logprobs[np.arange(n), chosen])
    correct = (rng.uniform(size=n) < expit(confidence_logit(top) + 4 * (reliance - 0.5))).astype(
        float
    )
    data = LabeledSet(
        ids=[f"c-{i}" for i in range(n)],
        mode="options",
        correct=correct,
        option_logprobs=logprobs,
        labels=np.full(n, -1),
        chosen=chosen,
        signals={"visual_reliance": reliance},
    )
    result = refit_profile(data, Profile.identity("m"), POLICY)
    assert result.metrics["nll_criterion"] == "binary"
    assert result.candidate is not None and result.candidate.method == "logistic"


def test_apply_profile_feeds_named_signals_to_a_logistic_profile() -> None:
    data = _sequence_set(2000, 8, True)
    model = FeatureLogistic([CONFIDENCE_LOGIT, "visual_reliance"]).fit(
        np.column_stack([confidence_logit(data.raw_confidence), data.signals["visual_reliance"]]),
        data.correct,
    )
    profile = Profile(model="m", mode="sequence", method="logistic", calibrator=model.to_dict())
    score = SequenceScore(mean_logprob=math.log(0.7), min_logprob=math.log(0.5), n_tokens=3)
    low = apply_profile(profile, score, signals={"visual_reliance": 0.05}).confidence
    high = apply_profile(profile, score, signals={"visual_reliance": 0.95}).confidence
    assert low is not None and high is not None and low < high
    # A Platt profile ignores signals entirely.
    platt = PlattScaler().fit(data.raw_confidence, data.correct)
    plain = Profile(model="m", mode="sequence", method="platt", calibrator=platt.to_dict())
    assert apply_profile(plain, score, signals={"visual_reliance": 0.05}).confidence == (
        apply_profile(plain, score).confidence
    )


def test_labeled_set_columns_come_from_recorded_signals() -> None:
    now = datetime.now(UTC)
    rows = [
        LabeledRow("a", "sequence", 0.9, {"signals": {"visual_reliance": 0.2}}, True, None, now),
        LabeledRow("b", "sequence", 0.4, {}, False, None, now),
        LabeledRow("c", "sequence", 0.6, {"signals": {"first_token_prob": 0.5}}, True, None, now),
    ]
    data, _ = build_labeled_set([rows[:2], rows[2:]], mode="sequence", signals=True)
    assert data.signals["visual_reliance"].tolist()[0] == 0.2
    assert np.isnan(data.signals["visual_reliance"][1:]).all()
    assert np.isnan(data.signals["first_token_prob"][:2]).all()
    assert data.signals["first_token_prob"][2] == 0.5


def test_signals_are_read_only_when_asked_and_while_the_newest_rows_carry_them() -> None:
    now = datetime.now(UTC)
    with_signal = {"signals": {"visual_reliance": 0.4}}
    newest = [LabeledRow("a", "sequence", 0.9, {}, True, None, now)]
    older = [LabeledRow("b", "sequence", 0.8, with_signal, True, None, now)]
    unasked, _ = build_labeled_set([older], mode="sequence")
    assert unasked.signals == {}
    # The newest batch carries no signal: older batches are not read for them.
    data, _ = build_labeled_set([newest, older], mode="sequence", signals=True)
    assert data.signals == {} and len(data) == 2
