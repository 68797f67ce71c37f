"""The real engine answers like an OpenAI server, with the logprobs calibration needs."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from tests.integration.conftest import ENGINE_TEST_TIMEOUT_S, RunningEngine

pytestmark = [pytest.mark.engine, pytest.mark.timeout(ENGINE_TEST_TIMEOUT_S)]

FEW_SHOT = (
    "Q: What is the capital of Germany?\nA: Berlin\n"
    "Q: What is the capital of Japan?\nA: Tokyo\n"
    "Q: What is the capital of Italy?\nA: Rome\n"
)


def _post(engine: RunningEngine, path: str, body: dict) -> dict:
    response = httpx.post(
        f"{engine.base_url}{path}", json={"model": engine.model, **body}, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_engine_is_healthy(engine: RunningEngine) -> None:
    root = engine.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health", timeout=10).status_code == 200


def test_models_lists_the_served_model(engine: RunningEngine) -> None:
    models = httpx.get(f"{engine.base_url}/models", timeout=10).json()
    assert engine.model in [m["id"] for m in models["data"]]


@pytest.mark.parametrize("k", [5, 20])
def test_chat_returns_top_logprobs(engine: RunningEngine, k: int) -> None:
    body = _post(
        engine,
        "/chat/completions",
        {
            "messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 4,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": k,
        },
    )
    content = body["choices"][0]["logprobs"]["content"]
    assert content, "no logprobs returned"
    for position in content:
        assert position["logprob"] <= 0.0
        assert len(position["top_logprobs"]) == k
        top = [entry["logprob"] for entry in position["top_logprobs"]]
        assert top == sorted(top, reverse=True)
        # Greedy decoding: the chosen token is the most likely one.
        assert math.isclose(position["logprob"], top[0], abs_tol=1e-4)


@pytest.mark.parametrize("k", [5, 20])
def test_completion_returns_top_logprobs(engine: RunningEngine, k: int) -> None:
    body = _post(
        engine,
        "/completions",
        {"prompt": FEW_SHOT + "Q: What is the capital of Spain?\nA:", "max_tokens": 3,
         "temperature": 0, "logprobs": k},
    )  # fmt: skip
    logprobs = body["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) >= 1
    assert all(len(top) == k for top in logprobs["top_logprobs"])
    assert logprobs["tokens"][0] in logprobs["top_logprobs"][0]


def test_few_shot_completion_answers_paris(engine: RunningEngine) -> None:
    body = _post(
        engine,
        "/completions",
        {"prompt": FEW_SHOT + "Q: What is the capital of France?\nA:", "max_tokens": 5,
         "temperature": 0, "logprobs": 5, "stop": ["\n"]},
    )  # fmt: skip
    choice = body["choices"][0]
    assert choice["text"].strip() == "Paris"
    # Confident: the first answer token carries most of the probability mass.
    assert math.exp(choice["logprobs"]["token_logprobs"][0]) > 0.5


def test_streaming_chunks_carry_logprobs(engine: RunningEngine) -> None:
    request = {
        "model": engine.model,
        "messages": [{"role": "user", "content": "Count: one, two,"}],
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 5,
        "stream": True,
    }
    chunks = []
    url = f"{engine.base_url}/chat/completions"
    with httpx.stream("POST", url, json=request, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    with_logprobs = [c for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]
    assert with_logprobs, "no chunk carried logprobs"
    for chunk in with_logprobs:
        for position in chunk["choices"][0]["logprobs"]["content"]:
            assert len(position["top_logprobs"]) == 5
