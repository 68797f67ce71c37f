"""The project's own SDK (`clients.sdk`) against the real gateway on loopback."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from clients.sdk import (
    APIConnectionError,
    AsyncCalibClient,
    BadRequestError,
    CalibClient,
    Completion,
    ConflictError,
    NotFoundError,
    RetryPolicy,
    StreamResult,
    UnprocessableEntityError,
    UpstreamError,
)
from tests.upstream_double import (
    JSONReply,
    StreamReply,
    chat_response,
    chat_stream,
    completion_response,
)

OPTION_STEPS = [
    ("B", -0.4, [("B", -0.4), ("A", -1.5), (" C", -2.0), ("D", -3.0)]),
    (".", -0.1, [(".", -0.1)]),
]
FAST_RETRY = RetryPolicy(max_retries=2, backoff_s=0.01, max_backoff_s=0.05)


def _expected_b_confidence() -> float:
    logprobs = np.array([-1.5, -0.4, -2.0, -3.0])
    probs = np.exp(logprobs) / np.exp(logprobs).sum()
    return float(probs[1])


@pytest.fixture
def sdk(gateway, double):
    with CalibClient(gateway.url, retry=FAST_RETRY) as c:
        yield c


def test_chat_returns_typed_calibration_with_the_option_confidence(sdk, double) -> None:
    double.reply = JSONReply(chat_response(OPTION_STEPS))
    result = sdk.chat("mcq", [{"role": "user", "content": "Pick one."}])
    assert isinstance(result, Completion)
    assert result.text == "B."
    assert result.calibration is not None
    assert result.calibration.answer == "B"
    assert result.calibration.confidence == pytest.approx(_expected_b_confidence())
    assert result.feedback_id == result.id


def test_calibration_options_go_into_the_request_calibration_object(sdk, double) -> None:
    double.reply = JSONReply(chat_response(OPTION_STEPS))
    result = sdk.chat(
        "plain-model", [{"role": "user", "content": "?"}], options=["A", "B", "C", "D"]
    )
    assert result.calibration.answer == "B"
    assert "calibration" not in double.last.json  # the gateway consumes it


def test_complete_returns_the_text_and_a_sequence_confidence(sdk, double) -> None:
    steps = [(" Paris", -0.2, [(" Paris", -0.2)]), ("\n", -0.1, [("\n", -0.1)])]
    double.reply = JSONReply(completion_response(steps))
    result = sdk.complete("plain-model", "Q: Capital of France?\nA:", max_tokens=3)
    assert result.text == " Paris\n"
    assert result.calibration.raw_confidence == pytest.approx(np.exp(np.mean([-0.2, -0.1])))


def test_stream_chat_yields_chunks_then_the_result_with_calibration(sdk, double) -> None:
    double.reply = StreamReply(chat_stream(OPTION_STEPS))
    items = list(sdk.stream_chat("mcq", [{"role": "user", "content": "Pick."}]))
    result = items[-1]
    assert isinstance(result, StreamResult)
    assert all(isinstance(item, dict) for item in items[:-1])
    assert result.text == "B."
    assert result.calibration is not None
    assert result.calibration.confidence == pytest.approx(_expected_b_confidence())


def test_feedback_round_trip_and_conflict(sdk, double) -> None:
    double.reply = JSONReply(chat_response(OPTION_STEPS))
    answer = sdk.chat("mcq", [{"role": "user", "content": "Pick."}])
    first = sdk.feedback(answer.feedback_id, label="B")
    assert first["correct"] is True
    assert sdk.feedback(answer.feedback_id, label="B")["status"] == "unchanged"
    with pytest.raises(ConflictError) as info:
        sdk.feedback(answer.feedback_id, label="C")
    assert info.value.status_code == 409
    assert info.value.message


def test_unknown_feedback_id_is_a_typed_not_found(sdk) -> None:
    with pytest.raises(NotFoundError):
        sdk.feedback("chatcmpl-does-not-exist", correct=True)


def test_feedback_needs_exactly_one_of_correct_or_label(sdk) -> None:
    with pytest.raises(ValueError):
        sdk.feedback("x")
    with pytest.raises(UnprocessableEntityError):
        sdk.feedback_many([{"id": "x"}])


def test_bad_request_carries_the_server_message_and_is_not_retried(sdk, double) -> None:
    with pytest.raises(BadRequestError) as info:
        sdk.chat("mcq", [{"role": "user", "content": "?"}], top_logprobs=-3)
    assert "top_logprobs" in info.value.message
    assert double.requests == []  # rejected by the gateway, never forwarded


def test_503_from_upstream_is_retried_until_it_succeeds(sdk, double) -> None:
    calls = {"n": 0}

    def flaky(path, body):
        calls["n"] += 1
        if calls["n"] <= 2:
            return JSONReply({"error": {"message": "warming up"}}, 503)
        return JSONReply(chat_response(OPTION_STEPS))

    double.reply = flaky
    result = sdk.chat("mcq", [{"role": "user", "content": "Pick."}])
    assert result.calibration.answer == "B"
    assert calls["n"] == 3


def test_persistent_502_gives_up_after_max_retries(sdk, double) -> None:
    double.reply = JSONReply({"error": {"message": "boom"}}, 502)
    with pytest.raises(UpstreamError):
        sdk.chat("mcq", [{"role": "user", "content": "Pick."}])
    assert len(double.requests) == FAST_RETRY.max_retries + 1


def test_unreachable_gateway_raises_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        CalibClient(f"http://127.0.0.1:{port}", retry=FAST_RETRY) as c,
        pytest.raises(APIConnectionError),
    ):
        c.chat("m", [{"role": "user", "content": "?"}])


async def test_async_client_chat_stream_and_feedback(gateway, double) -> None:
    async with AsyncCalibClient(gateway.url, retry=FAST_RETRY) as c:
        double.reply = JSONReply(chat_response(OPTION_STEPS))
        answer = await c.chat("mcq", [{"role": "user", "content": "Pick."}])
        assert answer.calibration.confidence == pytest.approx(_expected_b_confidence())
        assert (await c.feedback(answer.feedback_id, correct=False))["correct"] is False

        double.reply = StreamReply(chat_stream(OPTION_STEPS))
        items = [item async for item in c.stream_chat("mcq", [{"role": "user", "content": "?"}])]
        assert isinstance(items[-1], StreamResult)
        assert items[-1].calibration.answer == "B"
