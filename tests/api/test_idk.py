"""The IDK option: the gateway adds an "I don't know" choice, shows it, scores it, abstains."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import start_gateway
from tests.upstream_double import JSONReply, chat_response, completion_response

MODELS = {
    "letters": {"options": ["A", "B", "C", "D"], "add_idk_option": True},
    "letters-replace": {
        "options": ["A", "B", "C", "D"],
        "add_idk_option": True,
        "abstain": "replace",
        "idk_message": "Not sure.",
    },
    "labelled": {"options": ["A", "B"], "add_idk_option": True, "idk_label": "Z", "idk_text": "?"},
    "plain": {"options": ["A", "B", "C", "D"]},
}

QUESTION = "What is the capital of Brelmoria?\nA. Lima\nB. Oslo\nC. Dakar\nD. Hanoi"
USER = [{"role": "user", "content": QUESTION + "\nAnswer with the letter only."}]
PICKS_E = [(" E", -0.2, [(" E", -0.2), (" A", -2.0), (" B", -3.0)])]
PICKS_A = [(" A", -0.3, [(" A", -0.3), (" E", -1.5), (" B", -3.0)])]


@pytest.fixture(scope="module")
def idk_client(upstream_double, tmp_path_factory) -> Iterator[httpx.Client]:
    gw = start_gateway(
        upstream_double.base_url, tmp_path_factory.mktemp("idk") / "calib.db", models=MODELS
    )
    with httpx.Client(base_url=gw.url, timeout=10.0) as client:
        yield client
    gw.server.stop()


@pytest.fixture
def client(idk_client, double) -> httpx.Client:
    return idk_client


def chat(client, model="letters", messages=USER, **extra):
    return client.post("/v1/chat/completions", json={"model": model, "messages": messages, **extra})


def test_the_idk_line_reaches_the_upstream_after_the_last_option(client, double):
    double.reply = JSONReply(chat_response(PICKS_A))
    assert chat(client).status_code == 200
    sent = double.last.json["messages"][-1]["content"]
    assert sent == QUESTION + "\nE. I don't know\nAnswer with the letter only."


def test_the_idk_choice_is_scored(client, double):
    double.reply = JSONReply(chat_response(PICKS_A))
    cal = chat(client).json()["calibration"]
    assert set(cal["option_probs"]) == {"A", "B", "C", "D", "E"}
    assert cal["answer"] == "A"
    assert cal["abstained"] is False
    assert cal["option_probs"]["E"] > cal["option_probs"]["B"]


def test_choosing_it_abstains_with_reason_idk_option(client, double):
    double.reply = JSONReply(chat_response(PICKS_E))
    cal = chat(client).json()["calibration"]
    assert cal["answer"] == "E"
    assert cal["abstained"] is True
    assert cal["abstain_reason"] == "idk_option"


def test_replace_policy_returns_the_idk_message(client, double):
    double.reply = JSONReply(chat_response(PICKS_E))
    body = chat(client, model="letters-replace").json()
    assert body["choices"][0]["message"]["content"] == "Not sure."
    assert body["calibration"]["abstain_reason"] == "idk_option"
    assert body["calibration"]["withheld"] is True


def test_per_request_with_custom_text_and_string_options(client, double):
    # The whole added choice is written: " No" alone would name no option.
    steps = [(" No", -0.1, [(" No", -0.1), (" Lima", -2.5)]), (" idea", -0.2, [(" idea", -0.2)])]
    double.reply = JSONReply(chat_response(steps))
    messages = [{"role": "user", "content": "Capital of Brelmoria?\n- Lima\n- Oslo"}]
    calibration = {"options": ["Lima", "Oslo"], "add_idk_option": True, "idk_text": "No idea"}
    cal = chat(client, model="plain", messages=messages, calibration=calibration).json()
    sent = double.last.json["messages"][-1]["content"]
    assert sent == "Capital of Brelmoria?\n- Lima\n- Oslo\n- No idea"
    assert cal["calibration"]["answer"] == "No idea"
    assert cal["calibration"]["abstain_reason"] == "idk_option"


def test_the_request_can_turn_it_off(client, double):
    double.reply = JSONReply(chat_response(PICKS_A))
    cal = chat(client, calibration={"add_idk_option": False}).json()["calibration"]
    assert double.last.json["messages"] == USER
    assert set(cal["option_probs"]) == {"A", "B", "C", "D"}


def test_not_added_for_models_without_it(client, double):
    double.reply = JSONReply(chat_response(PICKS_A))
    chat(client, model="plain")
    assert double.last.json["messages"] == USER


def test_configured_label_and_text(client, double):
    steps = [(" Z", -0.1, [(" Z", -0.1), (" A", -2.5)])]
    double.reply = JSONReply(chat_response(steps))
    messages = [{"role": "user", "content": "Pick one.\nA) yes\nB) no"}]
    cal = chat(client, model="labelled", messages=messages).json()["calibration"]
    assert double.last.json["messages"][-1]["content"] == "Pick one.\nA) yes\nB) no\nZ) ?"
    assert cal["abstain_reason"] == "idk_option"


def test_completions_insert_the_line_before_the_answer_cue(client, double):
    double.reply = JSONReply(completion_response(PICKS_E))
    prompt = "Q: Capital of Brelmoria?\nLima, Oslo, Dakar or Hanoi?\nAnswer:"
    r = client.post(
        "/v1/completions",
        json={"model": "letters", "prompt": prompt},
    )
    assert double.last.json["prompt"] == (
        "Q: Capital of Brelmoria?\nLima, Oslo, Dakar or Hanoi?\nE. I don't know\nAnswer:"
    )
    assert r.json()["calibration"]["abstain_reason"] == "idk_option"


def test_completions_with_listed_options(client, double):
    double.reply = JSONReply(completion_response(PICKS_A))
    prompt = "Q: Capital?\nA. Lima\nB. Oslo\nC. Dakar\nD. Hanoi\nAnswer:"
    client.post("/v1/completions", json={"model": "letters", "prompt": prompt})
    assert double.last.json["prompt"] == (
        "Q: Capital?\nA. Lima\nB. Oslo\nC. Dakar\nD. Hanoi\nE. I don't know\nAnswer:"
    )


def test_a_label_clash_is_a_400(client, double):
    calibration = {"options": ["A", "I don't know"], "add_idk_option": True}
    r = chat(client, model="plain", calibration=calibration)
    # The options are not a letter sequence, so the label is the text, which is taken.
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "calibration.add_idk_option"


@pytest.mark.parametrize("bad", [{"add_idk_option": "yes"}, {"idk_text": ""}, {"idk_text": 3}])
def test_bad_idk_fields_are_400(client, double, bad):
    r = chat(client, calibration=bad)
    assert r.status_code == 400


def test_feedback_counts_abstention_as_right_on_an_idk_question(client, double):
    double.reply = JSONReply(chat_response(PICKS_E))
    said_idk = chat(client).json()["calibration"]["id"]
    double.reply = JSONReply(chat_response(PICKS_A))
    answered = chat(client).json()["calibration"]["id"]

    right = client.post("/v1/feedback", json={"id": said_idk, "label": "E"}).json()
    wrong = client.post("/v1/feedback", json={"id": answered, "label": "E"}).json()
    assert right["correct"] is True
    assert wrong["correct"] is False


def test_feedback_counts_abstention_as_wrong_on_an_answerable_question(client, double):
    double.reply = JSONReply(chat_response(PICKS_E))
    said_idk = chat(client).json()["calibration"]["id"]
    result = client.post("/v1/feedback", json={"id": said_idk, "label": "A"}).json()
    assert result["correct"] is False
