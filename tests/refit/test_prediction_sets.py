"""Prediction sets through the real gateway: an upstream double answers with known option
logprobs, the labels come from a known distribution (softmax(z / 2): the model is
overconfident), feedback and refit go through the HTTP API, and fresh questions are checked.

Sizes: the refit's held-out part (30 % of 5000 labels, ~1500 calibration scores) and 2500
fresh questions per target give a standard deviation of the measured coverage (one fitted
table's conditional coverage and the fresh sample together) of 0.013 at 0.8, 0.010 at 0.9 and
0.007 at 0.95: the band [target - 0.03, target + 0.05] is 2.3 to 4.3 of them below. Seeds
and response ids are fixed (the refit's split hashes the ids), so a run repeats exactly;
`_check_band` is also shown to reject sets built from a quantile 0.06 too low.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from calibrators import prediction_set
from service.store import Store
from tests.conftest import GATEWAY_MODELS, Gateway
from tests.refit.helpers import (
    OPTIONS,
    OptionItem,
    option_items,
    refit_client,
    start_refit_gateway,
)
from tests.refit.sets_helpers import T_TRUE, ask, body_for, train
from tests.upstream_double import (
    JSONReply,
    StreamReply,
    UpstreamDouble,
    chat_choices,
    chat_stream,
)

MODELS = {**GATEWAY_MODELS, "mcq-80": {"options": OPTIONS, "set_coverage": 0.8}}


@pytest.fixture(scope="module")
def sets_gateway(upstream_double: UpstreamDouble, tmp_path_factory) -> Iterator[Gateway]:
    gw = start_refit_gateway(upstream_double.base_url, tmp_path_factory, "sets", models=MODELS)
    yield gw
    gw.server.stop()


@pytest.fixture
def api(sets_gateway: Gateway, double: UpstreamDouble) -> Iterator[httpx.Client]:
    with refit_client(sets_gateway) as client:
        yield client


def _check_band(sets: list[list[str]], items: list[OptionItem], target: float) -> float:
    covered = sum(OPTIONS[item.truth] in s for s, item in zip(sets, items, strict=True))
    coverage = covered / len(items)
    assert target - 0.03 <= coverage <= target + 0.05, (target, coverage)
    return coverage


@pytest.fixture(scope="module")
def trained(sets_gateway: Gateway, upstream_double: UpstreamDouble) -> dict:
    upstream_double.reset()
    with refit_client(sets_gateway) as client:
        outcome = train(client, upstream_double, "mcq", "sets", 5000, seed=101)
    upstream_double.reset()
    return outcome


@pytest.mark.parametrize(("target", "seed"), [(0.9, 201), (0.8, 202), (0.95, 203)])
def test_fresh_questions_are_covered_at_the_target(
    api, double, trained, sets_gateway, target, seed
) -> None:
    assert trained["metrics"]["conformal"]["n"] == trained["metrics"]["n_heldout"]
    items = option_items(2500, T_TRUE, seed=seed)
    coverage_arg = None if target == 0.9 else target  # 0.9: the model's default
    cals = ask(api, double, items, "mcq", "sets", coverage_arg)
    sets = [cal["prediction_set"] for cal in cals]
    assert all(cal["set_coverage"] == target for cal in cals)
    for cal in cals:  # ordered by probability, drawn from the options, never empty
        probs = [cal["option_probs"][label] for label in cal["prediction_set"]]
        assert probs == sorted(probs, reverse=True) and set(cal["prediction_set"]) <= set(OPTIONS)
        assert cal["prediction_set"]
    coverage = _check_band(sets, items, target)
    mean_size = sum(map(len, sets)) / len(sets)
    assert mean_size < len(OPTIONS)

    # The band has power: sets from a quantile 0.05 too low (what a wrong rank gives) fail it.
    profile = sets_gateway.app.state.store.active_profile("mcq", "sets")
    table = profile.conformal_table
    assert table is not None
    smaller = [prediction_set(cal["option_probs"], table.quantile(target - 0.06)) for cal in cals]
    with pytest.raises(AssertionError):
        _check_band(smaller, items, target)
    print(f"target {target}: coverage {coverage:.4f}, mean set size {mean_size:.3f}")


def test_sets_are_recorded_and_streamed(api, double, trained, sets_gateway) -> None:
    item = option_items(1, T_TRUE, seed=301)[0]
    plain = ask(api, double, [item], "mcq", "sets", 0.7)[0]
    assert plain["set_coverage"] == 0.7

    double.reply = StreamReply(chat_stream(item.steps(), model="mcq"))
    body = {**body_for("mcq", "sets", 0.7), "stream": True}
    with api.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        chunks = [
            json.loads(line[6:])
            for line in response.iter_lines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    final = chunks[-1]["calibration"]
    assert final["prediction_set"] == plain["prediction_set"]
    assert final["set_coverage"] == 0.7
    finished = [c for c in chunks if c.get("choices") and "calibration" in c["choices"][0]]
    assert finished[0]["choices"][0]["calibration"]["prediction_set"] == plain["prediction_set"]

    store = sets_gateway.app.state.store
    for cid in (plain["id"], final["id"]):
        record = _wait_for(store, cid)
        indices = record.features["set_indices"]
        assert [OPTIONS[i] for i in indices] == plain["prediction_set"]
        assert record.features["set_coverage"] == 0.7


def _wait_for(store: Store, cid: str):
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = store.get_prediction(cid)
        if record is not None:
            return record
        time.sleep(0.05)
    raise AssertionError(f"prediction {cid} was not stored")


def test_model_setting_and_bad_coverages(api, double) -> None:
    outcome = train(api, double, "mcq-80", "default", 400, seed=401)
    assert outcome["activated"]
    cal = ask(api, double, option_items(1, T_TRUE, seed=402), "mcq-80", "default")[0]
    assert cal["set_coverage"] == 0.8 and cal["prediction_set"]
    for bad in (0, 1, 1.5, -0.1, "0.9", True):
        response = api.post("/v1/chat/completions", json=body_for("mcq", "sets", bad))
        assert response.status_code == 400, (bad, response.text)
        error = response.json()["error"]
        assert error["param"] == "calibration.set_coverage"
        assert "set_coverage" in error["message"] and error["type"] == "invalid_request_error"


def test_a_hand_set_temperature_drops_the_sets_a_threshold_keeps_them(api, double) -> None:
    # Model "mcq" has no `default` profile here, so "by-hand" starts without sets (a task
    # without its own profile is served the model's `default` one).
    train(api, double, "mcq", "by-hand", 400, seed=501)
    item = option_items(1, T_TRUE, seed=502)

    def asked() -> dict:
        return ask(api, double, item, "mcq", "by-hand")[0]

    assert asked()["prediction_set"]
    path = "/v1/calibration/models/mcq/profile"
    response = api.put(path, json={"task": "by-hand", "threshold": 0.3})
    assert response.status_code == 200, response.text
    assert asked()["prediction_set"]  # the same calibration: the table still applies
    response = api.put(path, json={"task": "by-hand", "temperature": 1.5})
    assert response.status_code == 200, response.text
    after = asked()
    # Scores under another temperature would not give the promised coverage: no sets.
    assert after["temperature"] == 1.5
    assert "prediction_set" not in after and "set_coverage" not in after


def test_every_choice_gets_its_own_set(api, double, trained) -> None:
    first, second = option_items(2, T_TRUE, seed=601)
    alone = [
        ask(api, double, [item], "mcq", "sets")[0]["prediction_set"] for item in (first, second)
    ]
    double.reply = JSONReply(chat_choices([first.steps(), second.steps()], model="mcq"))
    response = api.post("/v1/chat/completions", json={**body_for("mcq", "sets"), "n": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    sets = [choice["calibration"]["prediction_set"] for choice in body["choices"]]
    assert sets == alone
    assert body["calibration"]["prediction_set"] == alone[0]
