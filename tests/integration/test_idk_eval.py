"""IDK option and prompt optimization end to end on the real engine (behaviour, not quality).

A few real and invented-country questions; the gateway adds the IDK choice; a prompt-optimization
job with a budget of 4 evaluations runs through the admin endpoint against the engine and must
finish with its history recorded and either a new profile version or a rejection with a reason.
"""

from __future__ import annotations

import time

import httpx
import pytest

from benchmarks.eval_idk import SEEDS, build_items
from tests.conftest import start_gateway
from tests.integration.conftest import ENGINE_TEST_TIMEOUT_S

pytestmark = [pytest.mark.engine, pytest.mark.timeout(ENGINE_TEST_TIMEOUT_S)]


@pytest.fixture
def gateway(engine, tmp_path):
    gw = start_gateway(
        engine.base_url,
        tmp_path / "calib.db",
        models={engine.model: {"add_idk_option": True}},
        upstream_timeout_s=300.0,
        refit_enabled=False,
    )
    yield gw
    gw.server.stop()


def test_the_engine_sees_and_can_pick_the_idk_choice(gateway, engine):
    item = build_items(2, 1, seed=3, idk=False)[0]
    body = {
        "model": engine.model,
        "prompt": item.prompt,
        "max_tokens": 8,
        "temperature": 0,
        "stop": ["\n"],
        "calibration": {"options": item.options[:4]},
    }
    r = httpx.post(f"{gateway.url}/v1/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    assert set(cal["option_probs"] or {}) == {*item.options[:4], "I don't know"}
    if cal["answer"] == "I don't know":
        assert cal["abstained"] and cal["abstain_reason"] == "idk_option"


def test_a_small_prompt_optimization_job_completes(gateway, engine):
    items = build_items(4, 2, seed=3, idk=True)
    records = [
        {"id": i.id, "prompt": i.prompt, "options": i.options[:-1], "answer": i.answer,
         "add_idk_option": True, "answerable": i.answerable}
        for i in items
    ]  # fmt: skip
    payload = {"items": records, "seeds": SEEDS[:2], "k": 2, "m": 2, "n": 1, "budget": 4}
    with httpx.Client(base_url=gateway.url, timeout=300) as client:
        r = client.post(f"/v1/calibration/models/{engine.model}/prompt-optimizations", json=payload)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            view = client.get(f"/v1/calibration/prompt-optimizations/{job_id}").json()
            if view["status"] in ("succeeded", "rejected", "failed"):
                break
            time.sleep(1)
    assert view["status"] in ("succeeded", "rejected"), view
    assert 2 <= len(view["history"]) <= 4
    assert all(h["n"] == view["items"]["search"] for h in view["history"])
    result = view["result"]
    assert result["best_prompt"] in [h["prompt"] for h in view["history"]]
    if view["status"] == "succeeded":
        profile = gateway.app.state.store.active_profile(engine.model)
        assert profile.system_prompt == result["best_prompt"]
        assert result["version"] == profile.version
    else:
        assert result["reason"]
        assert gateway.app.state.store.active_profile(engine.model) is None
