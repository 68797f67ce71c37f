"""Legacy `/v1/completions` through the gateway."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.upstream_double import JSONReply, completion_response

STEPS = [
    (" B", -0.30, [(" B", -0.30), (" A", -1.70), (" C", -2.90), ("(D", -3.50)]),
    ("\n", -0.20, [("\n", -0.20), (".", -1.90)]),
]


def complete(client, model="mcq", prompt="Q: which? A:", **extra):
    return client.post("/v1/completions", json={"model": model, "prompt": prompt, **extra})


def test_options_mode_on_legacy_logprobs(client, double):
    double.reply = JSONReply(completion_response(STEPS))
    r = complete(client)
    assert r.status_code == 200
    cal = r.json()["calibration"]
    values = np.array([-1.70, -0.30, -2.90, -3.50])
    probs = np.exp(values - values.max()) / np.exp(values - values.max()).sum()
    assert cal["answer"] == "B"
    assert cal["confidence"] == pytest.approx(probs[1], abs=1e-12)


def test_sequence_mode_on_legacy_logprobs(client, double):
    double.reply = JSONReply(completion_response(STEPS))
    cal = complete(client, model="plain").json()["calibration"]
    assert cal["confidence"] == pytest.approx(math.exp((-0.30 - 0.20) / 2), abs=1e-12)


def test_gateway_asks_for_k_logprobs_and_keeps_the_larger_wish(client, double):
    complete(client)
    assert double.last.json["logprobs"] == 20
    complete(client, model="k5", logprobs=8)
    assert double.last.json["logprobs"] == 8


def test_logprobs_not_asked_for_are_stripped(client, double):
    double.reply = JSONReply(completion_response(STEPS))
    assert complete(client).json()["choices"][0]["logprobs"] is None


def test_logprobs_trimmed_to_the_clients_number(client, double):
    double.reply = JSONReply(completion_response(STEPS))
    lp = complete(client, logprobs=1).json()["choices"][0]["logprobs"]
    assert lp["top_logprobs"] == [{" B": -0.30}, {"\n": -0.20}]
    assert lp["tokens"] == [" B", "\n"]


def test_system_prompt_becomes_a_prefix(client, double):
    complete(client, model="sp-prepend", prompt="Capital of France?")
    assert double.last.json["prompt"] == "Answer with one word.\n\nCapital of France?"
    complete(client, model="sp-prepend", prompt=["one", "two"])
    assert double.last.json["prompt"] == [
        "Answer with one word.\n\none",
        "Answer with one word.\n\ntwo",
    ]
    complete(client, model="sp-off", prompt="x")
    assert double.last.json["prompt"] == "x"


def test_replace_policy_withholds_the_text(client, double):
    double.reply = JSONReply(completion_response(STEPS))
    body = complete(
        client, logprobs=5, calibration={"threshold": 0.99, "abstain": "replace"}
    ).json()
    assert body["choices"][0]["text"] == "I don't know."
    assert body["choices"][0]["logprobs"] is None
    assert body["calibration"]["abstained"] is True


def test_no_logprobs_from_upstream_degrades(client, double):
    double.reply = JSONReply(completion_response(None, text=" B"))
    r = complete(client)
    assert r.status_code == 200
    assert r.json()["calibration"]["confidence"] is None
    assert r.json()["choices"][0]["text"] == " B"
