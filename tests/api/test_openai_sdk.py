"""The official `openai` SDK, pointed at the gateway, works unchanged and reads `calibration`."""

from __future__ import annotations

import math

import openai
import pytest

from tests.conftest import GATEWAY_MODELS
from tests.upstream_double import (
    JSONReply,
    StreamReply,
    chat_response,
    chat_stream,
    completion_response,
)

STEPS = [
    (" A", -0.20, [(" A", -0.20), (" B", -1.80), (" C", -3.00), (" D", -5.00)]),
]
EXPECTED = math.exp(-0.20) / sum(math.exp(v) for v in (-0.20, -1.80, -3.00, -5.00))
MESSAGES = [{"role": "user", "content": "A, B, C or D?"}]


@pytest.fixture
def sdk(gateway, double):
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
async def async_sdk(gateway, double):
    c = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    yield c
    await c.close()


def test_sync_chat(sdk, double):
    double.reply = JSONReply(chat_response(STEPS))
    response = sdk.chat.completions.create(model="mcq", messages=MESSAGES)
    assert response.choices[0].message.content == " A"
    cal = response.model_extra["calibration"]
    assert cal["answer"] == "A"
    assert cal["confidence"] == pytest.approx(EXPECTED, abs=1e-12)
    assert cal["id"] == response.id


def test_sync_chat_with_calibration_options_via_extra_body(sdk, double):
    double.reply = JSONReply(chat_response(STEPS))
    response = sdk.chat.completions.create(
        model="plain",
        messages=MESSAGES,
        extra_body={"calibration": {"options": ["A", "B", "C", "D"], "threshold": 0.99}},
    )
    cal = response.model_extra["calibration"]
    assert cal["abstained"] is True and cal["abstain_reason"] == "below_threshold"


def test_sync_chat_logprobs_as_the_sdk_sees_them(sdk, double):
    double.reply = JSONReply(chat_response(STEPS))
    response = sdk.chat.completions.create(
        model="mcq", messages=MESSAGES, logprobs=True, top_logprobs=2
    )
    top = response.choices[0].logprobs.content[0].top_logprobs
    assert [t.token for t in top] == [" A", " B"]


def test_raw_response_headers(sdk, double):
    double.reply = JSONReply(chat_response(STEPS))
    raw = sdk.chat.completions.with_raw_response.create(model="mcq", messages=MESSAGES)
    assert raw.headers["x-calibration-abstained"] == "false"
    assert float(raw.headers["x-calibration-confidence"]) == pytest.approx(EXPECTED)


def test_sync_legacy_completion(sdk, double):
    double.reply = JSONReply(completion_response(STEPS))
    response = sdk.completions.create(model="mcq", prompt="Q?")
    assert response.model_extra["calibration"]["answer"] == "A"


def test_sync_streaming(sdk, double):
    double.reply = StreamReply(chat_stream(STEPS))
    chunks = list(sdk.chat.completions.create(model="mcq", messages=MESSAGES, stream=True))
    final = chunks[-1]
    assert final.choices == []
    cal = final.model_extra["calibration"]
    assert cal["confidence"] == pytest.approx(EXPECTED, abs=1e-12)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " A"


def test_sdk_raises_typed_errors(sdk, double):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="mcq", messages=MESSAGES, logprobs=True, top_logprobs=-1)
    assert info.value.status_code == 400
    double.known_models = {"test-model"}
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=MESSAGES)


def test_sdk_stream_interrupted_raises(sdk, double):
    double.reply = StreamReply(chat_stream(STEPS)[:2], drop=True)
    with pytest.raises(openai.APIError):
        list(sdk.chat.completions.create(model="mcq", messages=MESSAGES, stream=True))


def test_sdk_lists_models(sdk):
    """The names a client sends: `aliased` (served by the engine as `test-model`) and every
    other configured model, parsed by the SDK as `Model` objects."""
    models = {m.id: m for m in sdk.models.list()}
    assert set(models) == set(GATEWAY_MODELS)
    assert models["aliased"].owned_by == "double"  # the engine's entry, renamed
    assert models["mcq"].owned_by == "mllm-calib" and models["mcq"].object == "model"


async def test_async_chat(async_sdk, double):
    double.reply = JSONReply(chat_response(STEPS))
    response = await async_sdk.chat.completions.create(model="mcq", messages=MESSAGES)
    assert response.model_extra["calibration"]["confidence"] == pytest.approx(EXPECTED)


async def test_async_streaming(async_sdk, double):
    double.reply = StreamReply(chat_stream(STEPS))
    stream = await async_sdk.chat.completions.create(model="mcq", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].model_extra["calibration"]["answer"] == "A"
