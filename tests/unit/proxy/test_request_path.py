"""The pure functions of the request path (service/proxy): plan resolution, choice
calibration, system prompt injection, logprob trimming, and what the two serving objects read
off a choice. No network, no store: plain values in, plain values out."""

from __future__ import annotations

import math

import pytest

from calibrators import Profile, TemperatureScaler
from service.errors import APIError
from service.proxy import (
    CHAT,
    COMPLETIONS,
    CalibrationPlan,
    CalibrationRequest,
    LogprobWish,
    calibrate_choice,
    inject_chat_logprobs,
    inject_completion_logprobs,
    inject_system_prompt,
    no_choice_outcome,
    parse_calibration,
    prefix_prompt,
    resolve_plan,
    trim_chat_body,
    trim_chat_choice,
)
from service.settings import ModelConfig

# ------------------------------------------------------------------------- plan resolution


def stored(**fields) -> Profile:
    """A stored (version >= 1) profile."""
    return Profile(model="m", version=3, **fields)


def test_the_request_wins_over_the_profile_and_the_profile_over_the_configuration() -> None:
    config = ModelConfig(options=["X", "Y"], abstain="off")
    profile = stored(options=["A", "B", "C"], idk_option="C", abstain="replace")

    from_profile = resolve_plan(CalibrationRequest(), profile, config)
    assert from_profile.options == ("A", "B", "C")
    assert from_profile.idk_option == "C"
    assert from_profile.abstain == "replace"
    assert from_profile.mode == "options"

    asked = CalibrationRequest(options=("P", "Q"), abstain="annotate", threshold=0.4)
    from_request = resolve_plan(asked, profile, config)
    assert from_request.options == ("P", "Q")
    assert from_request.idk_option is None  # the profile's IDK label is not among these
    assert from_request.abstain == "annotate"
    assert from_request.threshold == 0.4


def test_the_identity_profiles_default_policy_does_not_outrank_the_configuration() -> None:
    config = ModelConfig(options=["A", "B"], abstain="replace")
    identity = Profile.identity("m")
    assert resolve_plan(CalibrationRequest(), identity, config).abstain == "replace"
    assert resolve_plan(CalibrationRequest(), stored(abstain="off"), config).abstain == "off"


def test_without_options_anywhere_the_plan_is_sequence_mode() -> None:
    plan = resolve_plan(CalibrationRequest(), Profile.identity("m"), ModelConfig())
    assert (plan.mode, plan.options, plan.idk_option) == ("sequence", None, None)
    assert plan.scoring == "path"


def test_options_mode_without_options_is_a_400() -> None:
    with pytest.raises(APIError) as caught:
        resolve_plan(CalibrationRequest(mode="options"), Profile.identity("m"), ModelConfig())
    assert caught.value.status == 400
    assert caught.value.param == "calibration.options"


def test_an_added_idk_choice_takes_the_next_letter() -> None:
    wanted = CalibrationRequest(options=("A", "B", "C", "D"), add_idk_option=True)
    plan = resolve_plan(wanted, Profile.identity("m"), ModelConfig())
    assert plan.options == ("A", "B", "C", "D", "E")
    assert plan.idk_option == "E"
    assert plan.idk_added
    assert plan.idk_text == "I don't know"


def test_parse_calibration_names_the_bad_field() -> None:
    with pytest.raises(APIError) as caught:
        parse_calibration({"abstain": "sometimes"})
    assert caught.value.param == "calibration.abstain"
    with pytest.raises(APIError) as caught:
        parse_calibration({"options": ["A", "B"], "idk_option": "C"})
    assert caught.value.param == "calibration.idk_option"
    with pytest.raises(APIError) as caught:
        parse_calibration({"colour": "blue"})
    assert caught.value.param == "calibration.colour"
    assert parse_calibration(None) == CalibrationRequest()


# ---------------------------------------------------------------------- choice calibration


def chat_logprobs(token: str, top: dict[str, float]) -> dict:
    return {
        "content": [
            {
                "token": token,
                "logprob": top[token],
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()],
            }
        ]
    }


def options_plan(**fields) -> CalibrationPlan:
    values = {
        "mode": "options",
        "options": ("A", "B"),
        "idk_option": None,
        "abstain": "annotate",
        "threshold": None,
        "task": "default",
        "idk_message": "I don't know.",
    }
    values.update(fields)
    return CalibrationPlan(**values)


def test_the_raw_confidence_is_the_softmax_over_the_options() -> None:
    logprobs = chat_logprobs("B", {"B": -0.4, "A": -1.5})
    out = calibrate_choice(logprobs, "B", options_plan(), Profile.identity("m"), "m")
    expected = math.exp(-0.4) / (math.exp(-0.4) + math.exp(-1.5))
    assert out.answer == "B"
    assert out.raw_confidence == pytest.approx(expected)
    assert out.confidence == pytest.approx(expected)
    assert out.option_probs == pytest.approx({"A": 1 - expected, "B": expected})
    assert (out.method, out.profile_version, out.abstained) == ("none", 0, False)


def test_a_temperature_profile_flattens_the_distribution() -> None:
    scaler = TemperatureScaler.from_dict({"temperature": 2.0})
    profile = stored(method="temperature", calibrator=scaler.to_dict())
    logprobs = chat_logprobs("B", {"B": -0.4, "A": -1.5})
    out = calibrate_choice(logprobs, "B", options_plan(), profile, "m")
    expected = math.exp(-0.2) / (math.exp(-0.2) + math.exp(-0.75))
    assert out.confidence == pytest.approx(expected)
    assert out.temperature == 2.0
    assert out.profile_version == 3


def test_a_profile_fitted_for_the_other_mode_falls_back_to_identity() -> None:
    scaler = TemperatureScaler.from_dict({"temperature": 2.0})
    profile = stored(mode="sequence", method="temperature", calibrator=scaler.to_dict())
    logprobs = chat_logprobs("B", {"B": -0.4, "A": -1.5})
    out = calibrate_choice(logprobs, "B", options_plan(), profile, "m")
    assert out.method == "none"
    assert out.profile_version == 0
    assert out.confidence == pytest.approx(out.raw_confidence)


def test_below_the_threshold_abstains_unless_the_policy_is_off() -> None:
    logprobs = chat_logprobs("B", {"B": -0.4, "A": -1.5})
    low = calibrate_choice(logprobs, "B", options_plan(threshold=0.9), Profile.identity("m"), "m")
    assert (low.abstained, low.abstain_reason) == (True, "below_threshold")
    off = options_plan(threshold=0.9, abstain="off")
    never = calibrate_choice(logprobs, "B", off, Profile.identity("m"), "m")
    assert (never.abstained, never.abstain_reason) == (False, None)
    assert never.confidence == pytest.approx(low.confidence)


def test_picking_the_idk_option_abstains() -> None:
    plan = options_plan(options=("A", "B", "C"), idk_option="C")
    logprobs = chat_logprobs("C", {"C": -0.1, "A": -2.5, "B": -3.0})
    out = calibrate_choice(logprobs, "C", plan, Profile.identity("m"), "m")
    assert (out.answer, out.abstained, out.abstain_reason) == ("C", True, "idk_option")


def test_nothing_to_score_says_why() -> None:
    plan = options_plan()
    identity = Profile.identity("m")
    assert calibrate_choice(None, "B", plan, identity, "m").reason == (
        "upstream_returned_no_logprobs"
    )
    nameless = calibrate_choice(chat_logprobs("Z", {"Z": -0.1}), "Z", plan, identity, "m")
    assert (nameless.confidence, nameless.reason) == (None, "answer_names_no_option")
    assert no_choice_outcome(plan, stored(threshold=0.3)).public("id-1") == {
        "id": "id-1",
        "confidence": None,
        "raw_confidence": None,
        "method": "none",
        "temperature": None,
        "threshold": 0.3,
        "abstained": False,
        "abstain_reason": None,
        "answer": None,
        "option_probs": None,
        "profile_version": 3,
        "mode": "options",
        "task": "default",
        "reason": "upstream_returned_no_choices",
    }


# ------------------------------------------------------------------ system prompt injection


def test_prepend_merges_into_the_clients_system_message() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    out = inject_system_prompt(messages, "Answer with a letter.", "prepend")
    assert out == [
        {"role": "system", "content": "Answer with a letter.\n\nBe brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert messages[0]["content"] == "Be brief."  # the client's dicts are not mutated


def test_prepend_adds_a_system_message_and_replace_drops_the_clients() -> None:
    user = {"role": "user", "content": "Hi"}
    ours = {"role": "system", "content": "Ours."}
    assert inject_system_prompt([user], "Ours.", "prepend") == [ours, user]
    theirs = [{"role": "system", "content": "Theirs."}, {"role": "developer", "content": "D"}]
    assert inject_system_prompt([*theirs, user], "Ours.", "replace") == [ours, user]
    assert inject_system_prompt([*theirs, user], "Ours.", "off") == [*theirs, user]
    assert inject_system_prompt([user], None, "prepend") == [user]


def test_text_prompts_get_the_system_prompt_as_a_prefix_token_ids_do_not() -> None:
    assert prefix_prompt("Q: 2+2?", "Answer briefly.", "prepend") == "Answer briefly.\n\nQ: 2+2?"
    assert prefix_prompt(["a", "b"], "S ", "prepend") == ["S a", "S b"]
    assert prefix_prompt([1, 2, 3], "S", "prepend") == [1, 2, 3]
    assert prefix_prompt("Q", "S", "off") == "Q"


def test_the_serving_objects_put_the_system_prompt_where_their_endpoint_reads_it() -> None:
    assert CHAT.with_system_prompt([{"role": "user", "content": "Q"}], "S", "prepend") == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
    ]
    assert COMPLETIONS.with_system_prompt("Q", "S", "prepend") == "S\n\nQ"


# ---------------------------------------------------------------------- logprob requests


def test_the_gateway_asks_for_the_larger_of_the_clients_and_its_own_k() -> None:
    body: dict = {"top_logprobs": 3, "logprobs": True}
    inject_chat_logprobs(body, LogprobWish(True, 3), 20)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 20)
    body = {}
    inject_chat_logprobs(body, LogprobWish(False, 0), 0)  # sequence mode: the token only
    assert (body["logprobs"], body["top_logprobs"]) == (True, 0)
    body = {"top_logprobs": 5}  # without logprobs: left for the engine to reject
    inject_chat_logprobs(body, LogprobWish(False, 0), 20)
    assert body == {"top_logprobs": 5}
    body = {"logprobs": 7}
    inject_completion_logprobs(body, LogprobWish(True, 7), 5)
    assert body["logprobs"] == 7


# ------------------------------------------------------------------------ logprob trimming


def test_chat_logprobs_go_when_the_client_did_not_ask() -> None:
    choice = {"logprobs": chat_logprobs("B", {"B": -0.4, "A": -1.5})}
    trim_chat_choice(choice, LogprobWish(False, 0))
    assert choice["logprobs"] is None


def test_chat_top_logprobs_are_cut_to_the_clients_count() -> None:
    choice = {"logprobs": chat_logprobs("B", {"B": -0.4, "A": -1.5, "C": -2.0, "D": -3.0})}
    trim_chat_choice(choice, LogprobWish(True, 2))
    tops = choice["logprobs"]["content"][0]["top_logprobs"]
    assert [t["token"] for t in tops] == ["B", "A"]
    kept = {"logprobs": chat_logprobs("B", {"B": -0.4, "A": -1.5})}
    trim_chat_choice(kept, LogprobWish(True, 2, listed=True))
    assert len(kept["logprobs"]["content"][0]["top_logprobs"]) == 2


def test_chat_prompt_logprobs_raised_by_echo_are_cut_back_by_rank() -> None:
    entry = {
        "7": {"logprob": -3.0, "rank": 3, "decoded_token": "x"},
        "1": {"logprob": -0.5, "rank": 1, "decoded_token": "a"},
        "2": {"logprob": -1.0, "rank": 2, "decoded_token": "b"},
        "9": {"logprob": -4.0, "rank": 4, "decoded_token": "y"},
    }
    body = {"prompt_logprobs": [None, dict(entry)]}
    trim_chat_body(body, LogprobWish(True, 1, echo=True))
    # The prompt token stays (first); with n=1 its rank counts the tokens at least as likely.
    assert body["prompt_logprobs"][1] == {
        "7": {"logprob": -3.0, "rank": 3, "decoded_token": "x"},
        "1": {"logprob": -0.5, "rank": 1, "decoded_token": "a"},
    }
    untouched = {"prompt_logprobs": [None, dict(entry)]}
    trim_chat_body(untouched, LogprobWish(True, 1, echo=True, prompt_logprobs=4))
    assert untouched["prompt_logprobs"][1] == entry


# -------------------------------------------------------- what the serving objects read off


def test_a_completion_choice_is_scored_without_its_echoed_prompt() -> None:
    choice = {
        "text": "Q? A",
        "logprobs": {
            "tokens": ["Q", "?", " A"],
            "token_logprobs": [None, -2.0, -0.1],
            "top_logprobs": [None, {"?": -2.0}, {" A": -0.1}],
        },
        "prompt_logprobs": [None, {"1": {"logprob": -2.0, "rank": 1}}],
    }
    logprobs, text = COMPLETIONS.generated(choice, "Q?", echo=True)
    assert text == " A"
    assert logprobs["tokens"] == [" A"]
    assert logprobs["top_logprobs"] == [{" A": -0.1}]


def test_a_chat_choice_continuing_the_assistants_message_drops_the_echo() -> None:
    body = {
        "echo": True,
        "messages": [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "The capital is"},
        ],
    }
    echoed = CHAT.echoed(body)
    assert echoed == ("The capital is",)
    choice = {"message": {"role": "assistant", "content": "The capital is Paris"}}
    assert CHAT.generated(choice, echoed[0], echo=True)[1] == " Paris"
    assert CHAT.echoed({"messages": body["messages"]}) is None


def test_completion_choices_map_to_their_prompt_chat_choices_to_the_one() -> None:
    assert COMPLETIONS.echoed({"echo": True, "prompt": ["a", "b"]}) == ("a", "b")
    assert COMPLETIONS.echoed({"echo": True, "prompt": [[1, 2], [3]]}) == (2, 1)
    assert [COMPLETIONS.prompt_of(i, 2) for i in range(4)] == [0, 0, 1, 1]
    assert [CHAT.prompt_of(i, 2) for i in range(4)] == [0, 0, 0, 0]


def test_streamed_logprobs_accumulate_in_each_endpoints_own_shape() -> None:
    chat = CHAT.new_logprobs()
    assert chat.logprobs() is None
    chat.add({"content": [{"token": "A", "logprob": -0.1}]})
    chat.add({"content": [{"token": "!", "logprob": -0.2}]})
    assert chat.logprobs() == {
        "content": [{"token": "A", "logprob": -0.1}, {"token": "!", "logprob": -0.2}]
    }
    text = COMPLETIONS.new_logprobs()
    text.add({"tokens": ["A"], "token_logprobs": [-0.1], "top_logprobs": [{"A": -0.1}]})
    text.add({"tokens": ["!"], "token_logprobs": [-0.2], "top_logprobs": [{"!": -0.2}]})
    assert text.logprobs() == {
        "tokens": ["A", "!"],
        "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"A": -0.1}, {"!": -0.2}],
    }


def test_withholding_replaces_the_answer_with_the_idk_message() -> None:
    chat = {"message": {"role": "assistant", "content": "B"}, "logprobs": {"content": []}}
    CHAT.withhold(chat, "I don't know.")
    assert chat == {"message": {"role": "assistant", "content": "I don't know."}, "logprobs": None}
    text = {"text": "B", "logprobs": {"tokens": ["B"]}}
    COMPLETIONS.withhold(text, "I don't know.")
    assert text == {"text": "I don't know.", "logprobs": None}
