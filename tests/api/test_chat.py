"""Chat completions through the gateway: calibration, injection, trimming, abstention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.upstream_double import JSONReply, chat_response

USER = [{"role": "user", "content": "Which letter? A, B, C or D."}]

# The model answers " B"; at that position the top-5 holds several spellings of the options.
MCQ_STEPS = [
    (
        " B",
        -0.40,
        [(" B", -0.40), ("B", -1.90), (" A", -1.60), ("(C", -3.00), (" D", -4.20)],
    ),
    (".", -0.02, [(".", -0.02), ("!", -4.5)]),
]


def option_softmax(option_logprobs: dict[str, float]) -> dict[str, float]:
    """Independent reference: numpy softmax over the option logprobs."""
    labels = list(option_logprobs)
    values = np.array([option_logprobs[k] for k in labels])
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    return dict(zip(labels, probs.tolist(), strict=True))


def chat(client, model="mcq", messages=USER, **extra):
    return client.post("/v1/chat/completions", json={"model": model, "messages": messages, **extra})


def test_options_mode_confidence_is_the_exact_option_softmax(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    r = chat(client)
    assert r.status_code == 200
    cal = r.json()["calibration"]

    # " B" and "B" both name option B: log-sum-exp of the two.
    expected = option_softmax(
        {"A": -1.60, "B": float(np.logaddexp(-0.40, -1.90)), "C": -3.00, "D": -4.20}
    )
    assert cal["mode"] == "options"
    assert cal["answer"] == "B"
    assert cal["confidence"] == pytest.approx(expected["B"], abs=1e-12)
    assert cal["raw_confidence"] == pytest.approx(expected["B"], abs=1e-12)
    assert cal["option_probs"] == pytest.approx(expected, abs=1e-12)
    assert cal["method"] == "none"
    assert cal["profile_version"] == 0
    assert cal["abstained"] is False and cal["abstain_reason"] is None


def test_calibration_object_has_the_contract_fields(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    body = chat(client).json()
    contract = {
        "id",
        "confidence",
        "raw_confidence",
        "method",
        "temperature",
        "threshold",
        "abstained",
        "abstain_reason",
        "answer",
        "option_probs",
        "profile_version",
    }
    assert contract <= set(body["calibration"])
    assert body["calibration"]["id"] == body["id"]


def test_headers_carry_id_confidence_and_abstained(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    r = chat(client)
    cal = r.json()["calibration"]
    assert r.headers["x-calibration-id"] == cal["id"]
    assert float(r.headers["x-calibration-confidence"]) == cal["confidence"]
    assert r.headers["x-calibration-abstained"] == "false"


def test_request_options_override_and_variants_like_open_paren(client, double):
    steps = [("(C", -0.2, [("(C", -0.2), (" A", -2.0), ("B", -2.5)]), (")", -0.1, [])]
    double.reply = JSONReply(chat_response(steps))
    r = chat(client, model="plain", calibration={"options": ["A", "B", "C"]})
    cal = r.json()["calibration"]
    expected = option_softmax({"A": -2.0, "B": -2.5, "C": -0.2})
    assert cal["answer"] == "C"
    assert cal["confidence"] == pytest.approx(expected["C"], abs=1e-12)


def test_option_missing_from_top_k_gets_the_kth_logprob_as_bound(client, double):
    steps = [("A", -0.1, [("A", -0.1), ("B", -2.5), ("zzz", -6.0)])]
    double.reply = JSONReply(chat_response(steps))
    cal = chat(client).json()["calibration"]
    expected = option_softmax({"A": -0.1, "B": -2.5, "C": -6.0, "D": -6.0})
    assert cal["confidence"] == pytest.approx(expected["A"], abs=1e-12)


def test_sequence_mode_confidence_is_exp_mean_logprob(client, double):
    steps = [("Par", -0.1, []), ("is", -0.3, []), (".", -0.05, [])]
    double.reply = JSONReply(chat_response(steps))
    cal = chat(client, model="plain").json()["calibration"]
    assert cal["mode"] == "sequence"
    assert cal["confidence"] == pytest.approx(math.exp((-0.1 - 0.3 - 0.05) / 3), abs=1e-12)
    assert cal["answer"] is None and cal["option_probs"] is None


def test_mode_in_request_overrides_configured_options(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    cal = chat(client, calibration={"mode": "sequence"}).json()["calibration"]
    assert cal["mode"] == "sequence"
    assert cal["confidence"] == pytest.approx(math.exp((-0.40 - 0.02) / 2), abs=1e-12)


def test_gateway_asks_the_engine_for_logprobs(client, double):
    chat(client)
    sent = double.last.json
    assert sent["logprobs"] is True
    assert sent["top_logprobs"] == 20
    assert "calibration" not in sent


def test_sequence_mode_asks_only_for_sampled_token_logprobs(client, double):
    chat(client, model="plain")
    assert double.last.json["top_logprobs"] == 0


def test_configured_k_is_used_and_the_clients_larger_wish_kept(client, double):
    chat(client, model="k5")
    assert double.last.json["top_logprobs"] == 5
    chat(client, model="k5", logprobs=True, top_logprobs=12)
    assert double.last.json["top_logprobs"] == 12


def test_logprobs_the_client_did_not_ask_for_are_not_returned(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    body = chat(client).json()
    assert body["choices"][0]["logprobs"] is None


def test_logprobs_are_trimmed_to_the_clients_top_logprobs(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    body = chat(client, logprobs=True, top_logprobs=2).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [len(step["top_logprobs"]) for step in content] == [2, 2]
    # vLLM keeps the first n entries of its list (the sampled token, then by rank).
    assert [t["token"] for t in content[0]["top_logprobs"]] == [" B", "B"]


def test_a_sampled_token_outside_the_top_stays_first_as_vllm_lists_it(client, double):
    """Sampling at temperature > 0 can pick a token that is not the most likely: vLLM lists it
    first, then the top-K by rank, and `top_logprobs=n` keeps the first n of that list."""
    steps = [(" C", -2.0, [(" C", -2.0), (" A", -0.3), (" B", -1.5), (" D", -3.0)])]
    double.reply = JSONReply(chat_response(steps))
    body = chat(client, logprobs=True, top_logprobs=2).json()
    top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    assert [t["token"] for t in top] == [" C", " A"]


def test_logprobs_true_without_top_logprobs_keeps_tokens_only(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    content = chat(client, logprobs=True).json()["choices"][0]["logprobs"]["content"]
    assert [step["token"] for step in content] == [" B", "."]
    assert all(step["top_logprobs"] == [] for step in content)


def test_unknown_fields_pass_through_both_ways(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS, extra={"vendor_field": {"x": 1}}))
    body = chat(client, repetition_penalty=1.1, chat_template_kwargs={"a": 1}).json()
    assert double.last.json["repetition_penalty"] == 1.1
    assert double.last.json["chat_template_kwargs"] == {"a": 1}
    assert body["vendor_field"] == {"x": 1}
    assert body["usage"]["prompt_tokens"] == 10


def test_system_prompt_prepended(client, double):
    chat(client, model="sp-prepend")
    assert double.last.json["messages"] == [
        {"role": "system", "content": "Answer with one word."},
        *USER,
    ]


def test_system_prompt_prepend_merges_into_the_clients_system_message(client, double):
    messages = [{"role": "system", "content": "Be brief."}, *USER]
    chat(client, model="sp-prepend", messages=messages)
    sent = double.last.json["messages"]
    assert sent[0] == {"role": "system", "content": "Answer with one word.\n\nBe brief."}
    assert sent[1:] == USER


def test_system_prompt_replace_drops_the_clients_system_message(client, double):
    messages = [{"role": "system", "content": "Be brief."}, *USER]
    chat(client, model="sp-replace", messages=messages)
    assert double.last.json["messages"] == [
        {"role": "system", "content": "Answer with one word."},
        *USER,
    ]


def test_system_prompt_policy_off_leaves_messages_alone(client, double):
    chat(client, model="sp-off")
    assert double.last.json["messages"] == USER


def test_threshold_abstention_annotates_by_default(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    r = chat(client, calibration={"threshold": 0.99})
    body = r.json()
    cal = body["calibration"]
    assert cal["abstained"] is True
    assert cal["abstain_reason"] == "below_threshold"
    assert cal["threshold"] == 0.99
    assert body["choices"][0]["message"]["content"] == " B."
    assert r.headers["x-calibration-abstained"] == "true"


def test_replace_policy_withholds_the_answer_everywhere(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS, n=2))
    r = chat(client, logprobs=True, calibration={"threshold": 0.99, "abstain": "replace"})
    body = r.json()
    assert [c["message"]["content"] for c in body["choices"]] == ["I don't know."] * 2
    assert all(c["logprobs"] is None for c in body["choices"])
    cal = body["calibration"]
    assert cal["abstained"] is True and cal["answer"] is None and cal["option_probs"] is None
    assert " B" not in r.text


def test_replace_policy_configured_per_model(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    body = chat(client, model="mcq-replace", calibration={"threshold": 0.99}).json()
    assert body["choices"][0]["message"]["content"] == "I don't know."


def test_replace_keeps_a_confident_answer(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    body = chat(client, model="mcq-replace", calibration={"threshold": 0.1}).json()
    assert body["choices"][0]["message"]["content"] == " B."
    assert body["calibration"]["abstained"] is False


def test_abstain_off_never_abstains(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    cal = chat(client, calibration={"threshold": 0.99, "abstain": "off"}).json()["calibration"]
    assert cal["abstained"] is False and cal["abstain_reason"] is None
    assert cal["confidence"] is not None


def test_idk_option_chosen_abstains(client, double):
    steps = [(" E", -0.1, [(" E", -0.1), (" A", -2.6)])]
    double.reply = JSONReply(chat_response(steps))
    cal = chat(client, model="mcq-idk").json()["calibration"]
    assert cal["answer"] == "E"
    assert cal["abstained"] is True
    assert cal["abstain_reason"] == "idk_option"


def test_idk_option_from_the_request(client, double):
    steps = [("X", -0.1, [("X", -0.1), ("Y", -2.6)])]
    double.reply = JSONReply(chat_response(steps))
    cal = chat(client, calibration={"options": ["X", "Y"], "idk_option": "X"}).json()["calibration"]
    assert cal["abstain_reason"] == "idk_option"


def test_upstream_without_logprobs_returns_answer_with_null_confidence(client, double):
    double.reply = JSONReply(chat_response(None, content="B"))
    r = chat(client)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "B"
    cal = body["calibration"]
    assert cal["confidence"] is None and cal["abstained"] is False
    assert cal["reason"] == "upstream_returned_no_logprobs"
    assert r.headers["x-calibration-confidence"] == "null"


def test_answer_naming_no_option_has_null_confidence_and_a_reason(client, double):
    steps = [("Maybe", -0.3, [("Maybe", -0.3), ("A", -2.0)])]
    double.reply = JSONReply(chat_response(steps))
    cal = chat(client).json()["calibration"]
    assert cal["confidence"] is None
    assert cal["reason"] == "answer_names_no_option"


def test_upstream_body_without_choices_is_not_a_crash(client, double):
    double.reply = JSONReply({"id": "weird", "object": "chat.completion", "choices": []})
    r = chat(client)
    assert r.status_code == 200
    assert r.json()["calibration"]["reason"] == "upstream_returned_no_choices"


def test_n_greater_than_one_top_level_is_choice_zeros(client, double):
    double.reply = JSONReply(chat_response(MCQ_STEPS, n=3))
    body = chat(client, n=3).json()
    assert len(body["choices"]) == 3
    assert body["calibration"]["answer"] == "B"
    assert body["calibration"] == body["choices"][0]["calibration"]
    assert [c["calibration"]["answer"] for c in body["choices"]] == ["B", "B", "B"]


def test_served_name_alias_is_sent_upstream_and_restored(client, double):
    body = chat(client, model="aliased").json()
    assert double.last.json["model"] == "test-model"
    assert body["model"] == "aliased"


def test_prediction_is_recorded_for_feedback(client, double, gateway):
    double.reply = JSONReply(chat_response(MCQ_STEPS))
    cid = chat(client, calibration={"task": "vqa"}).json()["calibration"]["id"]
    store = gateway.app.state.store
    record = _wait_for(lambda: store.get_prediction(cid))
    assert record.model == "mcq" and record.task == "vqa" and record.mode == "options"
    assert record.answer == "B" and record.options == ["A", "B", "C", "D"]
    assert record.tenant == "default"
    assert record.features["option_logprobs"]
    assert record.prompt_hash and record.request_content is None


def _wait_for(fn, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value is not None:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")
