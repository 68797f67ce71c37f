"""Every choice calibrated: `n > 1` and lists of prompts, streamed or not.

Each choice gets its own `choices[i].calibration` (the contract's fields) and feedback id
(`<response id>-<i>`, choice 0 keeps the response id); the top-level `calibration` is choice
0's; every choice is recorded; `replace` withholds each abstaining choice on its own.
"""

from __future__ import annotations

import json
import math
import time

import httpx
import numpy as np
import openai
import pytest

from tests.upstream_double import (
    JSONReply,
    StreamReply,
    chat_choices,
    chat_choices_stream,
    completion_choices,
)

USER = [{"role": "user", "content": "Which letter? A, B, C or D."}]

CONFIDENT_B = [(" B", -0.05, [(" B", -0.05), (" A", -3.5), (" C", -4.0), (" D", -5.0)])]
UNSURE_A = [(" A", -0.9, [(" A", -0.9), (" B", -1.0), (" C", -1.6), (" D", -2.5)])]
NO_OPTION = [("Maybe", -0.3, [("Maybe", -0.3), ("A", -2.0)])]


def softmax_at(values: dict[str, float], label: str) -> float:
    """Independent reference: numpy softmax over the option logprobs, at `label`."""
    labels = list(values)
    v = np.array([values[k] for k in labels])
    p = np.exp(v - v.max())
    return float(p[labels.index(label)] / p.sum())


EXPECTED_B = softmax_at({"A": -3.5, "B": -0.05, "C": -4.0, "D": -5.0}, "B")
EXPECTED_A = softmax_at({"A": -0.9, "B": -1.0, "C": -1.6, "D": -2.5}, "A")


def chat(client: httpx.Client, model: str = "mcq", **extra) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": USER, **extra})


def wait_for(fetch, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while (value := fetch()) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def test_each_chat_choice_has_its_own_calibration(client, double):
    double.reply = JSONReply(chat_choices([CONFIDENT_B, UNSURE_A, NO_OPTION]))
    r = chat(client, n=3)
    assert r.status_code == 200, r.text
    body = r.json()
    cals = [choice["calibration"] for choice in body["choices"]]
    assert [c["id"] for c in cals] == [body["id"], f"{body['id']}-1", f"{body['id']}-2"]
    assert [c["answer"] for c in cals] == ["B", "A", None]
    assert cals[0]["confidence"] == pytest.approx(EXPECTED_B, abs=1e-12)
    assert cals[1]["confidence"] == pytest.approx(EXPECTED_A, abs=1e-12)
    assert cals[2]["confidence"] is None and cals[2]["reason"] == "answer_names_no_option"
    assert body["calibration"] == cals[0]  # the top level stays choice 0's
    assert r.headers["x-calibration-id"] == body["id"]
    assert float(r.headers["x-calibration-confidence"]) == cals[0]["confidence"]
    contract = {"id", "confidence", "raw_confidence", "method", "temperature", "threshold"}
    assert all(contract <= set(c) for c in cals)


def test_every_choice_is_recorded_and_takes_feedback(client, double, gateway):
    double.reply = JSONReply(chat_choices([CONFIDENT_B, UNSURE_A]))
    body = chat(client, n=2, calibration={"task": "per-choice"}).json()
    first, second = (choice["calibration"]["id"] for choice in body["choices"])
    store = gateway.app.state.store
    records = [wait_for(lambda cid=cid: store.get_prediction(cid)) for cid in (first, second)]
    assert [r.answer for r in records] == ["B", "A"]
    assert records[1].confidence == pytest.approx(EXPECTED_A, abs=1e-12)
    assert all(r.task == "per-choice" and r.mode == "options" for r in records)

    fb = client.post(
        "/v1/feedback", json=[{"id": second, "label": "B"}, {"id": first, "label": "B"}]
    )
    assert fb.status_code == 200, fb.text
    assert [item["correct"] for item in fb.json()["data"]] == [False, True]
    assert client.get(f"/v1/feedback/{second}").json()["label"] == "B"


def test_replace_withholds_each_abstaining_choice_on_its_own(client, double):
    double.reply = JSONReply(chat_choices([CONFIDENT_B, UNSURE_A]))
    r = chat(client, n=2, logprobs=True, calibration={"threshold": 0.7, "abstain": "replace"})
    body = r.json()
    kept, withheld = body["choices"]
    assert kept["message"]["content"] == " B" and kept["logprobs"] is not None
    assert kept["calibration"]["abstained"] is False and "withheld" not in kept["calibration"]
    assert withheld["message"]["content"] == "I don't know."
    assert withheld["logprobs"] is None
    cal = withheld["calibration"]
    assert cal["abstained"] is True and cal["withheld"] is True
    assert cal["answer"] is None and cal["option_probs"] is None
    assert r.headers["x-calibration-abstained"] == "false"  # choice 0's

    double.reply = JSONReply(chat_choices([UNSURE_A, CONFIDENT_B]))
    body = chat(client, n=2, calibration={"threshold": 0.7, "abstain": "replace"}).json()
    assert [c["message"]["content"] for c in body["choices"]] == ["I don't know.", " B"]
    assert body["calibration"]["withheld"] is True and body["calibration"]["id"] == body["id"]


def test_a_list_of_prompts_calibrates_each_prompts_answer(client, double, gateway):
    double.reply = JSONReply(completion_choices([UNSURE_A, CONFIDENT_B]))
    r = client.post(
        "/v1/completions",
        json={"model": "mcq", "prompt": ["Q1? Answer:", "Q2? Answer:"], "logprobs": 1},
    )
    body = r.json()
    cals = [choice["calibration"] for choice in body["choices"]]
    assert [c["answer"] for c in cals] == ["A", "B"]
    assert cals[0]["confidence"] == pytest.approx(EXPECTED_A, abs=1e-12)
    assert cals[1]["confidence"] == pytest.approx(EXPECTED_B, abs=1e-12)
    assert body["calibration"] == cals[0]
    record = wait_for(lambda: gateway.app.state.store.get_prediction(cals[1]["id"]))
    assert record.answer == "B"


def _events(response: httpx.Response) -> list:
    return [
        line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ")
    ]


def test_streamed_choices_are_calibrated_on_their_finishing_chunk(client, double, gateway):
    double.reply = StreamReply(chat_choices_stream([CONFIDENT_B, UNSURE_A]))
    body = {"model": "mcq", "messages": USER, "n": 2, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        got = _events(r)
    assert got[-1] == "[DONE]"
    final = got[-2]
    assert final["choices"] == [] and "usage" not in final
    finishing = {
        c["index"]: c["calibration"]
        for event in got[:-2]
        for c in event["choices"]
        if c["finish_reason"] is not None
    }
    unfinished = [c for event in got[:-2] for c in event["choices"] if c["finish_reason"] is None]
    assert all("calibration" not in c for c in unfinished)
    rid = got[0]["id"]
    assert finishing[0]["id"] == rid and finishing[1]["id"] == f"{rid}-1"
    assert finishing[0]["confidence"] == pytest.approx(EXPECTED_B, abs=1e-12)
    assert finishing[1]["confidence"] == pytest.approx(EXPECTED_A, abs=1e-12)
    assert final["calibration"] == finishing[0]
    store = gateway.app.state.store
    assert wait_for(lambda: store.get_prediction(f"{rid}-1")).answer == "A"
    assert store.get_prediction(rid).answer == "B"


def test_usage_chunk_stays_last_and_carries_the_calibration(client, double):
    double.reply = StreamReply(chat_choices_stream([CONFIDENT_B], usage=True))
    body = {
        "model": "mcq",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        got = _events(r)
    assert double.last.json["stream_options"] == {"include_usage": True}  # passed on as sent
    assert got[-1] == "[DONE]"
    last = got[-2]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 1
    assert last["calibration"]["confidence"] == pytest.approx(EXPECTED_B, abs=1e-12)
    assert sum(1 for e in got[:-1] if not e["choices"]) == 1  # no extra chunk after usage


def test_openai_sdk_sees_usage_last_with_the_calibration(gateway, double):
    double.reply = StreamReply(chat_choices_stream([CONFIDENT_B, UNSURE_A], usage=True))
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as sdk:
        chunks = list(
            sdk.chat.completions.create(
                model="mcq",
                messages=USER,
                n=2,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 2
    assert last.model_extra["calibration"]["answer"] == "B"
    per_choice = {
        c.index: c.model_extra["calibration"]
        for chunk in chunks
        for c in chunk.choices
        if c.finish_reason is not None
    }
    assert per_choice[1]["answer"] == "A"
    assert math.isclose(per_choice[1]["confidence"], EXPECTED_A, abs_tol=1e-12)
