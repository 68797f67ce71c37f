"""Sequence signals through the HTTP API: recorded with each answer, chosen by a refit, and the
logistic profile served to the next answer (compared with an independent computation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from calibrators import FeatureLogistic
from tests.upstream_double import JSONReply, chat_response

TASK = "seq-signals"


def _steps(probs: list[float]) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """One token per probability; the top list holds only the sampled token (no top-K asked)."""
    return [(f" w{i}", math.log(p), [(f" w{i}", math.log(p))]) for i, p in enumerate(probs)]


def _ask(api, probs: list[float]) -> dict:
    response = api.post(
        "/v1/chat/completions",
        json={
            "model": "plain",
            "messages": [{"role": "user", "content": "Capital of Peru?"}],
            "calibration": {"task": TASK, "mode": "sequence"},
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["calibration"]


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def test_signals_are_recorded_and_a_logistic_profile_is_served(api, double, refit_gateway):
    # Right or wrong follows the first token's probability; the later tokens are noise, so
    # exp(mean logprob) (today's Platt input) is a blurred copy of what matters.
    rng = np.random.default_rng(21)
    answers = []
    for _ in range(600):
        length = int(rng.integers(2, 6))
        answers.append([rng.uniform(0.05, 0.99), *rng.uniform(0.4, 1.0, size=length - 1)])
    correct = [bool(rng.uniform() < expit(2.0 * _logit(p[0]))) for p in answers]
    pending = [chat_response(_steps(p), model="plain") for p in answers]
    double.reply = lambda path, body: JSONReply(pending.pop(0))
    ids = [_ask(api, p)["id"] for p in answers]
    batch = [{"id": i, "correct": c} for i, c in zip(ids, correct, strict=True)]
    assert api.post("/v1/feedback", json=batch).status_code == 200

    # Recorded with each prediction: the signals of its own tokens.
    store = refit_gateway.app.state.store
    stored = {p.prediction.id: p for p in store.labeled_predictions("plain", TASK)}
    first = stored[ids[0]].prediction.features["signals"]
    p0 = answers[0]
    assert first["first_token_logit"] == pytest.approx(_logit(p0[0]))
    assert first["min_token_logit"] == pytest.approx(_logit(min(p0)))
    assert first["joint_logit"] == pytest.approx(_logit(math.prod(p0)))
    assert first["n_tokens"] == len(p0)
    assert "first_margin" not in first  # no top-K in sequence mode: the margin is missing

    outcome = api.post("/v1/calibration/models/plain/refit", params={"task": TASK}).json()
    assert outcome["status"] == "activated", outcome
    chosen = outcome["metrics"]["chosen"]
    assert outcome["method"] == "logistic" and "first_token_logit" in chosen, outcome
    assert chosen in outcome["reason"]
    nll = outcome["metrics"]["heldout_nll"]
    assert nll[chosen] < nll["platt"]
    assert "logistic:first_margin" not in nll

    profile = api.get("/v1/calibration/models/plain", params={"task": TASK}).json()
    model = FeatureLogistic.from_dict(profile["active"]["calibrator"])
    probe = [0.9, 0.5, 0.8]
    double.reply = JSONReply(chat_response(_steps(probe), model="plain"))
    cal = _ask(api, probe)
    raw = math.prod(probe) ** (1 / 3)
    expected = model.predict_row(
        {
            "confidence_logit": _logit(raw),
            "first_token_logit": _logit(0.9),
            "min_token_logit": _logit(0.5),
            "joint_logit": _logit(math.prod(probe)),
            "n_tokens": 3.0,
        }
    )
    assert cal["method"] == "logistic" and cal["profile_version"] == outcome["version"]
    assert cal["raw_confidence"] == pytest.approx(raw, abs=1e-12)
    assert cal["confidence"] == pytest.approx(expected, abs=1e-9)
