"""The feedback loop through the HTTP API: answers with known logprobs, labels, refit, and the
next answers calibrated with the new profile (exactly, compared with numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from calibrators import TemperatureScaler, grid_search_temperature
from calibrators.refit import holdout_mask
from tests.refit.helpers import OPTIONS, OptionItem, option_items, queue_reply, softmax
from tests.upstream_double import JSONReply, chat_response

T_TRUE = 2.0
PROBE = OptionItem([-0.3, -1.6, -2.9, -4.0], 0, 0)


def ask(api, double, items, task, model="mcq"):
    """Send one chat request per item; returns the calibration objects."""
    double.reply = queue_reply(items, task)
    out = []
    for _ in items:
        response = api.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "Pick A, B, C or D."}],
                "calibration": {"task": task},
            },
        )
        assert response.status_code == 200, response.text
        out.append(response.json()["calibration"])
    return out


def label(api, calibrations, items, how):
    """Post feedback: 'label' (true option), 'correct' (right/wrong only) or 'mixed'."""
    batch = []
    for i, (cal, item) in enumerate(zip(calibrations, items, strict=True)):
        kind = how if how != "mixed" else ("label" if i % 2 else "correct")
        if kind == "label":
            batch.append({"id": cal["id"], "label": OPTIONS[item.truth]})
        else:
            batch.append({"id": cal["id"], "correct": item.correct})
    for start in range(0, len(batch), 500):
        response = api.post("/v1/feedback", json=batch[start : start + 500])
        assert response.status_code == 200, response.text


def refit(api, task, model="mcq", **params):
    return api.post(f"/v1/calibration/models/{model}/refit", params={"task": task, **params})


def probe(api, double, task):
    return ask(api, double, [PROBE], task)[0]


SEEDS = {"label": 11, "correct": 12, "mixed": 13}


@pytest.mark.parametrize(("how", "tolerance"), [("label", 0.25), ("correct", 0.4), ("mixed", 0.3)])
def test_refit_recovers_the_temperature_and_is_served_exactly(api, double, how, tolerance):
    task = f"t-{how}"
    before = probe(api, double, task)
    assert before["method"] == "none" and before["profile_version"] == 0

    items = option_items(1200, T_TRUE, seed=SEEDS[how])  # str hash() varies per process
    cals = ask(api, double, items, task)
    label(api, cals, items, how)

    response = refit(api, task)
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["status"] == "activated" and outcome["activated"] is True
    assert outcome["version"] == outcome["active_version"] >= 1
    assert outcome["n_labels"] == len(items)
    assert outcome["method"] == "temperature"
    assert outcome["temperature"] == pytest.approx(T_TRUE, abs=tolerance)
    assert outcome["metrics"]["calibrated"]["ece"] < outcome["metrics"]["raw"]["ece"]

    # The continuous optimizer is at least as good as the paper's grid on the same fit part.
    fit = ~holdout_mask([c["id"] for c in cals], 0.3)
    matrix = np.array([item.logprobs for item in items])[fit]
    chosen = np.array([item.chosen for item in items])[fit]
    correct = np.array([item.correct for item in items], dtype=float)[fit]
    labels = np.array(
        [
            item.truth if (how == "label" or (how == "mixed" and i % 2)) else -1
            for i, item in enumerate(items)
        ]
    )[fit]
    # A right answer known only as "correct" is a label too (feedback_rules records it).
    labels = np.where((labels < 0) & (correct == 1), chosen, labels)
    scaler = TemperatureScaler().fit(matrix, labels, chosen=chosen, correct=correct)
    assert outcome["temperature"] == pytest.approx(scaler.temperature_, rel=1e-6)
    grid_t = grid_search_temperature(matrix, labels, chosen=chosen, correct=correct)
    grid_nll = TemperatureScaler.from_dict({"temperature": grid_t}).nll(
        matrix, labels, chosen=chosen, correct=correct
    )
    assert scaler.nll(matrix, labels, chosen=chosen, correct=correct) <= grid_nll + 1e-9

    after = probe(api, double, task)
    t = outcome["temperature"]
    assert after["method"] == "temperature"
    assert after["temperature"] == t
    assert after["profile_version"] == outcome["version"]
    expected = softmax(PROBE.logprobs, t)
    assert after["confidence"] == pytest.approx(expected[0], abs=1e-12)
    assert after["raw_confidence"] == pytest.approx(softmax(PROBE.logprobs)[0], abs=1e-12)
    assert after["option_probs"] == pytest.approx(dict(zip(OPTIONS, expected, strict=True)))


def _sequence_steps(raw: float, n_tokens: int = 3):
    lp = float(np.log(raw))
    return [(f" w{i}", lp, [(f" w{i}", lp)]) for i in range(n_tokens)]


def _sequence_round(api, double, task, n, seed):
    rng = np.random.default_rng(seed)
    raws = rng.uniform(0.05, 0.99, size=n)
    correct = rng.uniform(size=n) < raws**3  # far less often right than it says
    pending = [chat_response(_sequence_steps(r), model="plain") for r in raws]
    double.reply = lambda path, body: JSONReply(pending.pop(0))
    ids = []
    for _ in range(n):
        response = api.post(
            "/v1/chat/completions",
            json={
                "model": "plain",
                "messages": [{"role": "user", "content": "Capital of France?"}],
                "calibration": {"task": task, "mode": "sequence"},
            },
        )
        cal = response.json()["calibration"]
        assert cal["mode"] == "sequence" and cal["raw_confidence"] is not None
        ids.append(cal["id"])
    batch = [{"id": i, "correct": bool(c)} for i, c in zip(ids, correct, strict=True)]
    for start in range(0, n, 500):
        assert api.post("/v1/feedback", json=batch[start : start + 500]).status_code == 200


def test_sequence_mode_refits_platt_below_the_isotonic_bound(api, double):
    _sequence_round(api, double, "seq-small", 400, seed=7)
    outcome = refit(api, "seq-small", model="plain").json()
    assert outcome["status"] == "activated"
    # Platt, or a logistic map over a sequence signal: the truth here is raw³, the joint
    # probability of the three equal tokens, so `joint_logit` may win by more than its standard
    # error on some hold-out splits (the split hashes the response ids, random per run).
    assert outcome["method"] in ("platt", "logistic")
    assert "isotonic" not in outcome["metrics"]["heldout_nll"]
    double.reply = JSONReply(chat_response(_sequence_steps(0.9), model="plain"))
    cal = api.post(
        "/v1/chat/completions",
        json={
            "model": "plain",
            "messages": [{"role": "user", "content": "?"}],
            "calibration": {"task": "seq-small", "mode": "sequence"},
        },
    ).json()["calibration"]
    assert cal["method"] == outcome["method"] and cal["profile_version"] == outcome["version"]
    assert cal["confidence"] < cal["raw_confidence"] == pytest.approx(0.9)


def test_sequence_mode_also_tries_isotonic_above_the_bound(api, double, refit_gateway):
    settings = refit_gateway.app.state.refit_runner.config
    assert settings.isotonic_min_labels == 1000
    _sequence_round(api, double, "seq-large", 1600, seed=8)  # ~1120 fit items >= 1000
    outcome = refit(api, "seq-large", model="plain").json()
    assert outcome["status"] == "activated"
    scored = outcome["metrics"]["heldout_nll"]
    assert {"platt", "isotonic"} <= set(scored)
    # The logistic candidates over the sequence signals compete too (docs/refit.md): here the
    # truth is raw³, the joint probability of the three equal tokens, so `joint_logit` can win.
    candidates = {k: v for k, v in scored.items() if k not in ("challenger", "champion")}
    chosen = outcome["metrics"]["chosen"]
    if "selection" in outcome["metrics"]:  # a logistic map won by less than its noise
        chosen_over = outcome["metrics"]["selection"]["best_nll"]
        assert candidates[chosen_over] == min(candidates.values())
    else:
        assert candidates[chosen] == min(candidates.values())
    assert outcome["method"] == chosen.split(":")[0]


def test_too_few_labels_is_not_activated_and_says_why(api, double):
    items = option_items(20, T_TRUE, seed=3)
    cals = ask(api, double, items, "few")
    label(api, cals, items, "label")
    outcome = refit(api, "few").json()
    assert outcome["status"] == "insufficient_labels" and outcome["activated"] is False
    assert outcome["reason"] == "only 20 labels, need at least 50"
    assert outcome["version"] is None
    assert probe(api, double, "few")["method"] == "none"
    # Recorded in the audit log even though no version was made.
    assert api.get("/v1/calibration/models/mcq", params={"task": "few"}).status_code == 404
    status = api.get(f"/v1/calibration/refits/{outcome['id']}").json()
    assert status["status"] == "insufficient_labels"


def test_a_worse_challenger_is_rejected_and_recorded(api, double):
    task = "champion"
    items = option_items(600, T_TRUE, seed=11)
    cals = ask(api, double, items, task)
    label(api, cals, items, "label")
    # The champion: the temperature that is optimal on exactly the held-out items, so any
    # challenger fitted on the other items is worse there.
    ids = [c["id"] for c in cals]
    held = holdout_mask(ids, 0.3)
    matrix = np.array([item.logprobs for item in items])[held]
    truths = np.array([item.truth for item in items])[held]
    best_t = TemperatureScaler().fit(matrix, truths).temperature_
    put = api.put("/v1/calibration/models/mcq/profile", json={"task": task, "temperature": best_t})
    assert put.status_code == 200, put.text
    champion = put.json()["version"]

    outcome = refit(api, task).json()
    assert outcome["status"] == "rejected" and outcome["activated"] is False
    assert "worse than active" in outcome["reason"]
    assert outcome["version"] == champion + 1
    assert outcome["active_version"] == champion
    nll = outcome["metrics"]["heldout_nll"]
    assert nll["challenger"] > nll["champion"]

    shown = api.get("/v1/calibration/models/mcq", params={"task": task}).json()
    assert shown["active"]["version"] == champion
    rejected = next(v for v in shown["history"] if v["version"] == outcome["version"])
    assert rejected["active"] is False
    assert rejected["reason"].startswith("refit: ") and "worse than active" in rejected["reason"]
    assert rejected["metrics"]["calibrated"]["ece"] is not None
    assert probe(api, double, task)["temperature"] == pytest.approx(best_t)


def test_manual_profile_rollback_and_history(api, double):
    task = "manual"
    first = api.put(
        "/v1/calibration/models/mcq/profile",
        json={"task": task, "temperature": 3.0, "threshold": 0.5, "system_prompt": "Be brief."},
    )
    assert first.status_code == 200, first.text
    v1 = first.json()
    assert v1["notes"] == "manual" and v1["reason"].startswith("manual: temperature=3")
    cal = probe(api, double, task)
    assert cal["temperature"] == 3.0 and cal["profile_version"] == v1["version"]
    assert cal["confidence"] == pytest.approx(softmax(PROBE.logprobs, 3.0)[0], abs=1e-12)
    assert cal["threshold"] == 0.5
    assert double.last.json["messages"][0] == {"role": "system", "content": "Be brief."}

    v2 = api.put(
        "/v1/calibration/models/mcq/profile", json={"task": task, "temperature": 1.5}
    ).json()
    assert v2["version"] == v1["version"] + 1
    assert v2["threshold"] == 0.5 and v2["system_prompt"] == "Be brief."  # kept
    assert probe(api, double, task)["temperature"] == 1.5

    back = api.post(
        "/v1/calibration/models/mcq/rollback", json={"task": task, "version": v1["version"]}
    )
    assert back.status_code == 200, back.text
    assert back.json()["previous_version"] == v2["version"]
    cal = probe(api, double, task)
    assert cal["temperature"] == 3.0 and cal["profile_version"] == v1["version"]

    shown = api.get("/v1/calibration/models/mcq", params={"task": task}).json()
    assert [v["version"] for v in shown["history"]] == [v2["version"], v1["version"]]
    assert shown["active"]["version"] == v1["version"]
    kinds = [(e["kind"], e["version"]) for e in shown["events"]]
    assert kinds == [("rollback", v1["version"]), ("manual", v2["version"]), ("manual", 1)]

    listed = api.get("/v1/calibration/models").json()["data"]
    entry = next(e for e in listed if e["model"] == "mcq" and e["task"] == task)
    assert entry["active_version"] == v1["version"] and entry["temperature"] == 3.0
    assert entry["threshold"] == 0.5 and entry["method"] == "temperature"


def test_errors_are_openai_shaped(api):
    def error(response, status):
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        return body

    error(api.get("/v1/calibration/models/nope"), 404)
    error(api.get("/v1/calibration/models/nope/reliability"), 404)
    error(api.post("/v1/calibration/models/nope/refit"), 404)
    error(api.get("/v1/calibration/refits/refit_0000"), 404)
    api.put("/v1/calibration/models/mcq/profile", json={"task": "err", "threshold": 0.3})
    body = error(
        api.post("/v1/calibration/models/mcq/rollback", json={"task": "err", "version": 99}), 404
    )
    assert body["param"] == "version"
    error(api.put("/v1/calibration/models/mcq/profile", json={"temprature": 2}), 422)
    error(api.put("/v1/calibration/models/mcq/profile", json={"threshold": 2}), 422)
    error(api.put("/v1/calibration/models/mcq/profile", json={"task": "err"}), 422)
    error(
        api.put(
            "/v1/calibration/models/mcq/profile",
            json={"task": "err", "mode": "sequence", "temperature": 2},
        ),
        422,
    )
    error(api.post("/v1/calibration/models/mcq/rollback", json={"version": "x"}), 422)
    error(api.get("/v1/calibration/models/mcq", params={"task": "bad task!"}), 422)


def test_wait_false_returns_202_and_a_status_url(api, double):
    items = option_items(200, T_TRUE, seed=21)
    cals = ask(api, double, items, "async")
    label(api, cals, items, "label")
    response = refit(api, "async", wait="false")
    assert response.status_code == 202
    body = response.json()
    assert body["status_url"] == f"/v1/calibration/refits/{body['id']}"
    assert response.headers["location"] == body["status_url"]
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = api.get(body["status_url"]).json()
        if status["status"] != "running":
            break
        time.sleep(0.1)
    # This test is about the asynchronous API: the attempt finished and says what it did.
    # (The split hashes response ids, which differ per run, so on 200 labels champion/challenger
    # may rarely keep the identity; activation itself is covered by the tests above.)
    assert status["status"] in {"activated", "rejected"}, status
    assert status["reason"]
    if status["status"] == "activated":
        assert status["version"] >= 1
