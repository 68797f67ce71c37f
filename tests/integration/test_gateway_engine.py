"""The gateway in front of the real engine (vLLM CPU + Gemma 3 270M): the full request path.

Chat and completions, streamed and not, options and sequence mode, and a feedback round trip,
all through a real uvicorn server of our app. The small model's answers are not asserted (it is
not a good multiple-choice model); what is asserted is that the real engine's logprobs are
scored and calibrated, and that the answer and its prediction record line up.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import ENGINE_TEST_TIMEOUT_S, RunningEngine, gateway_client

pytestmark = [pytest.mark.engine, pytest.mark.timeout(ENGINE_TEST_TIMEOUT_S)]

FEW_SHOT = (
    "Question: Is fire hot? A) yes B) no\nAnswer: A\n\n"
    "Question: Is ice hot? A) yes B) no\nAnswer: B\n\n"
    "Question: Is the sun hot? A) yes B) no\nAnswer:"
)
OPTIONS = {"options": ["A", "B"]}


@pytest.fixture(scope="module")
def gw(engine: RunningEngine, tmp_path_factory) -> Iterator[httpx.Client]:
    db = tmp_path_factory.mktemp("gw-engine") / "calib.db"
    with gateway_client(
        engine.base_url, db, upstream_timeout_s=120.0, client_timeout_s=180.0
    ) as client:
        yield client


def _sse(response: httpx.Response) -> list:
    return [
        line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ")
    ]


def test_completions_options_mode(gw: httpx.Client, engine: RunningEngine) -> None:
    r = gw.post(
        "/v1/completions",
        json={
            "model": engine.model,
            "prompt": FEW_SHOT,
            "max_tokens": 2,
            "temperature": 0,
            "calibration": OPTIONS,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    cal = body["calibration"]
    assert cal["mode"] == "options" and cal["method"] == "none"
    assert cal["answer"] in ("A", "B"), body["choices"][0]["text"]
    assert 0.5 <= cal["confidence"] <= 1.0  # the greedy choice of two options
    assert sum(cal["option_probs"].values()) == pytest.approx(1.0)
    assert body["choices"][0]["logprobs"] is None  # not asked for, not returned
    assert float(r.headers["x-calibration-confidence"]) == cal["confidence"]


def test_completions_stream_options_mode(gw: httpx.Client, engine: RunningEngine) -> None:
    body = {
        "model": engine.model,
        "prompt": FEW_SHOT,
        "max_tokens": 2,
        "temperature": 0,
        "stream": True,
        "calibration": OPTIONS,
    }
    with gw.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        events = _sse(r)
    assert events[-1] == "[DONE]"
    assert events[-2]["calibration"]["answer"] in ("A", "B")


def test_chat_sequence_mode(gw: httpx.Client, engine: RunningEngine) -> None:
    r = gw.post(
        "/v1/chat/completions",
        json={
            "model": engine.model,
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        },
    )
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    assert cal["mode"] == "sequence"
    assert 0.0 < cal["confidence"] <= 1.0
    assert cal["confidence"] == cal["raw_confidence"]


def test_chat_options_mode_and_client_logprobs(gw: httpx.Client, engine: RunningEngine) -> None:
    r = gw.post(
        "/v1/chat/completions",
        json={
            "model": engine.model,
            "max_tokens": 3,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 2,
            "calibration": OPTIONS,
            "messages": [{"role": "user", "content": FEW_SHOT}],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    for step in body["choices"][0]["logprobs"]["content"]:
        assert len(step["top_logprobs"]) == 2  # the gateway asked for 20, the client for 2
    cal = body["calibration"]
    assert cal["mode"] == "options"
    assert cal["confidence"] is not None or cal["reason"] == "answer_names_no_option"


def test_chat_stream_sequence_mode(gw: httpx.Client, engine: RunningEngine) -> None:
    body = {
        "model": engine.model,
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": "Say hello."}],
    }
    with gw.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = _sse(r)
    assert events[-1] == "[DONE]"
    cal = events[-2]["calibration"]
    assert 0.0 < cal["confidence"] <= 1.0
    deltas = [e for e in events[:-2] if e.get("choices")]
    assert all(e["choices"][0].get("logprobs") is None for e in deltas)


def test_feedback_round_trip(gw: httpx.Client, engine: RunningEngine) -> None:
    r = gw.post(
        "/v1/completions",
        json={
            "model": engine.model,
            "prompt": FEW_SHOT,
            "max_tokens": 2,
            "temperature": 0,
            "calibration": OPTIONS,
        },
    )
    cal = r.json()["calibration"]
    fb = gw.post("/v1/feedback", json={"id": cal["id"], "label": "A"})
    assert fb.status_code == 200, fb.text
    assert fb.json()["correct"] is (cal["answer"] == "A")
    stored = gw.get(f"/v1/feedback/{cal['id']}")
    assert stored.status_code == 200 and stored.json()["label"] == "A"
    assert gw.post("/v1/feedback", json={"id": cal["id"], "label": "B"}).status_code == 409


def test_unknown_model_is_the_engines_404(gw: httpx.Client) -> None:
    r = gw.post(
        "/v1/chat/completions",
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 404
    assert r.json()["error"]["message"]


def test_echo_confidence_is_the_answers_alone(gw: httpx.Client, engine: RunningEngine) -> None:
    """With `echo` the engine returns the prompt's tokens too; the confidence must be the same
    as without `echo` (the generated tokens only)."""
    body = {
        "model": engine.model,
        "prompt": "Q: What is the capital of France?\nA:",
        "max_tokens": 5,
        "temperature": 0,
        "calibration": {"mode": "sequence"},
    }
    plain = gw.post("/v1/completions", json=body).json()
    echoed = gw.post("/v1/completions", json={**body, "echo": True, "logprobs": 1}).json()
    assert echoed["choices"][0]["text"] == body["prompt"] + plain["choices"][0]["text"]
    assert echoed["calibration"]["raw_confidence"] == pytest.approx(
        plain["calibration"]["raw_confidence"], abs=0.02
    )
    lp = echoed["choices"][0]["logprobs"]
    n_prompt = len(echoed["choices"][0]["prompt_logprobs"])
    generated = lp["token_logprobs"][n_prompt:]
    assert len(generated) == 5
    mean = sum(generated) / len(generated)
    assert echoed["calibration"]["raw_confidence"] == pytest.approx(math.exp(mean), abs=1e-9)


def test_every_choice_is_calibrated_and_takes_feedback(
    gw: httpx.Client, engine: RunningEngine
) -> None:
    r = gw.post(
        "/v1/completions",
        json={
            "model": engine.model,
            "prompt": [FEW_SHOT, FEW_SHOT.replace("sun", "snow")],
            "n": 2,
            "max_tokens": 2,
            "temperature": 1.0,
            "seed": 11,
            "calibration": OPTIONS,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["choices"]) == 4
    ids = [choice["calibration"]["id"] for choice in body["choices"]]
    assert ids == [body["id"], *(f"{body['id']}-{i}" for i in range(1, 4))]
    assert body["calibration"] == body["choices"][0]["calibration"]
    for choice in body["choices"]:
        cal = choice["calibration"]
        named = choice["text"].strip()[:1]
        if cal["confidence"] is None:
            assert cal["reason"] == "answer_names_no_option"
        else:
            assert cal["answer"] == named, choice
            assert sum(cal["option_probs"].values()) == pytest.approx(1.0)
    last = body["choices"][-1]["calibration"]
    fb = gw.post("/v1/feedback", json={"id": last["id"], "correct": True})
    assert fb.status_code == 200, fb.text
    assert gw.get(f"/v1/feedback/{last['id']}").json()["correct"] is True


def test_streamed_choices_are_each_calibrated(gw: httpx.Client, engine: RunningEngine) -> None:
    body = {
        "model": engine.model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "n": 2,
        "max_tokens": 4,
        "temperature": 1.0,
        "seed": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with gw.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = _sse(r)
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    finishing = {
        c["index"]: c["calibration"]
        for e in events[:-2]
        for c in e["choices"]
        if c.get("finish_reason") is not None
    }
    assert sorted(finishing) == [0, 1]
    assert finishing[1]["id"] == f"{last['id']}-1"
    assert all(0.0 < cal["confidence"] <= 1.0 for cal in finishing.values())
    assert last["calibration"] == finishing[0]
