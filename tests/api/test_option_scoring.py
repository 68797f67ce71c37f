"""String options through the gateway: path scoring, and `scoring: "likelihood"`.

The upstream double answers the generation and, for the likelihood requests (recognized by
`prompt_logprobs`), vLLM-shaped prompt logprobs chosen by the test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.upstream_double import (
    JSONReply,
    RawReply,
    StreamReply,
    chat_response,
    completion_response,
    completion_stream,
)

OPTIONS = ["New York", "New Delhi", "New Orleans"]
NEW_YORK = [
    (" New", -0.5, [(" New", -0.5), (" Los", -1.5)]),
    (" York", -0.2, [(" York", -0.2), (" Delhi", -2.0), (" Orleans", -3.0)]),
    ("\n", -0.1, [("\n", -0.1)]),
]
# Log-likelihood of each option's text after the prompt, as the double reports it.
LIKELIHOOD = {"New York": (-0.9, -0.3), "New Delhi": (-0.9, -4.0), "New Orleans": (-0.9, -2.5)}


def prompt_logprobs(option: str, lead: str) -> list:
    """vLLM's `prompt_logprobs`: None, a prompt token, then the option's two tokens."""
    first, second = option.split(" ", 1)
    lps = LIKELIHOOD[option]
    return [
        None,
        {"2": {"logprob": -3.0, "rank": 4, "decoded_token": "A:"}},
        {"7": {"logprob": lps[0], "rank": 1, "decoded_token": lead + first}},
        {"9": {"logprob": lps[1], "rank": 1, "decoded_token": " " + second}},
    ]


def expected_likelihood_probs() -> np.ndarray:
    values = np.array([sum(LIKELIHOOD[o]) for o in OPTIONS])
    return np.exp(values) / np.exp(values).sum()


def legacy_reply(path: str, body: dict):
    if "prompt_logprobs" in body:
        choices = []
        for i, prompt in enumerate(body["prompt"]):
            option = next(o for o in OPTIONS if prompt.endswith(o))
            choices.append({"index": i, "text": ",", "logprobs": None,
                            "prompt_logprobs": prompt_logprobs(option, " ")})  # fmt: skip
        return JSONReply({"id": "cmpl-lik", "object": "text_completion", "choices": choices})
    return JSONReply(completion_response(NEW_YORK))


def chat_reply(path: str, body: dict):
    if "prompt_logprobs" in body:
        option = body["messages"][-1]["content"]
        extra = {"prompt_logprobs": prompt_logprobs(option, "")}
        return JSONReply(chat_response(None, content="\n", extra=extra))
    return JSONReply(chat_response(NEW_YORK))


def complete(client, scoring=None, prompt="Q: largest US city?\nA:", **extra):
    calibration = {"options": OPTIONS}
    if scoring:
        calibration["scoring"] = scoring
    body = {"model": "plain", "prompt": prompt, "calibration": calibration, **extra}
    return client.post("/v1/completions", json=body)


def test_path_scoring_follows_the_shared_first_token(client, double):
    double.reply = JSONReply(completion_response(NEW_YORK))
    cal = complete(client).json()["calibration"]
    assert cal["answer"] == "New York"
    assert cal["scoring"] == "path"
    values = np.array([-0.7, -2.5, -3.5])
    probs = np.exp(values) / np.exp(values).sum()
    assert [cal["option_probs"][o] for o in OPTIONS] == pytest.approx(probs, abs=1e-12)
    assert cal["confidence"] == pytest.approx(probs[0], abs=1e-12)


def test_an_answer_naming_no_option_is_not_scored(client, double):
    steps = [(" Q", -0.2, [(" Q", -0.2), (" Quito", -1.0)]), (".", -0.1, [(".", -0.1)])]
    double.reply = JSONReply(completion_response(steps))
    body = {"model": "plain", "prompt": "Q: capital of Ecuador?\nA:",
            "calibration": {"options": ["Quito", "Lima", "Bogota"]}}  # fmt: skip
    cal = client.post("/v1/completions", json=body).json()["calibration"]
    assert cal["answer"] is None
    assert cal["confidence"] is None
    assert cal["reason"] == "answer_names_no_option"


def test_likelihood_scoring_sends_one_batched_request_and_uses_its_sums(client, double):
    double.reply = legacy_reply
    response = complete(client, scoring="likelihood")
    assert response.status_code == 200
    body = response.json()
    cal = body["calibration"]
    assert cal["scoring"] == "likelihood"
    assert cal["answer"] == "New York"
    assert [cal["option_probs"][o] for o in OPTIONS] == pytest.approx(
        expected_likelihood_probs(), abs=1e-12
    )
    scoring = [r.json for r in double.requests if "prompt_logprobs" in r.json]
    assert len(scoring) == 1
    assert scoring[0]["prompt"] == [f"Q: largest US city?\nA: {o}" for o in OPTIONS]
    assert scoring[0]["max_tokens"] == 1
    assert scoring[0]["prompt_logprobs"] == 0
    # The client's response is the generation's, not the scoring request's.
    assert body["choices"][0]["text"] == " New York\n"


def test_likelihood_scoring_can_be_the_models_configuration(client, double):
    double.reply = legacy_reply
    body = {"model": "cities-likelihood", "prompt": "Q: largest US city?\nA:"}
    cal = client.post("/v1/completions", json=body).json()["calibration"]
    assert cal["scoring"] == "likelihood"
    assert cal["answer"] == "New York"


def test_likelihood_scoring_in_chat_continues_the_assistant_turn(client, double):
    double.reply = chat_reply
    messages = [{"role": "user", "content": "Largest US city?"}]
    body = {"model": "plain", "messages": messages,
            "calibration": {"options": OPTIONS, "scoring": "likelihood"}}  # fmt: skip
    cal = client.post("/v1/chat/completions", json=body).json()["calibration"]
    assert cal["scoring"] == "likelihood"
    assert [cal["option_probs"][o] for o in OPTIONS] == pytest.approx(
        expected_likelihood_probs(), abs=1e-12
    )
    scoring = [r.json for r in double.requests if "prompt_logprobs" in r.json]
    assert sorted(r["messages"][-1]["content"] for r in scoring) == sorted(OPTIONS)
    for r in scoring:
        assert r["messages"][:-1] == messages
        assert r["messages"][-1]["role"] == "assistant"
        assert r["continue_final_message"] is True
        assert r["add_generation_prompt"] is False


def test_likelihood_scoring_falls_back_to_the_path_when_the_upstream_fails(client, double):
    def reply(path: str, body: dict):
        if "prompt_logprobs" in body:
            return RawReply(b'{"error": {"message": "boom"}}', 500, "application/json")
        return JSONReply(completion_response(NEW_YORK))

    double.reply = reply
    response = complete(client, scoring="likelihood")
    assert response.status_code == 200
    cal = response.json()["calibration"]
    assert cal["scoring"] == "path"
    assert cal["answer"] == "New York"
    assert cal["confidence"] == pytest.approx(
        math.exp(-0.7) / sum(math.exp(v) for v in (-0.7, -2.5, -3.5)), abs=1e-12
    )


def test_likelihood_scoring_in_a_stream(client, double):
    def reply(path: str, body: dict):
        if "prompt_logprobs" in body:
            return legacy_reply(path, body)
        return StreamReply(completion_stream(NEW_YORK))

    double.reply = reply
    body = {"model": "plain", "prompt": "Q: largest US city?\nA:", "stream": True,
            "calibration": {"options": OPTIONS, "scoring": "likelihood"}}  # fmt: skip
    with client.stream("POST", "/v1/completions", json=body) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    cal = json.loads(events[-2])["calibration"]
    assert cal["scoring"] == "likelihood"
    assert cal["answer"] == "New York"
    assert [cal["option_probs"][o] for o in OPTIONS] == pytest.approx(
        expected_likelihood_probs(), abs=1e-12
    )


def test_an_unknown_scoring_is_a_clear_400(client, double):
    response = complete(client, scoring="exact")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "calibration.scoring"
    assert "path" in error["message"] and "likelihood" in error["message"]
