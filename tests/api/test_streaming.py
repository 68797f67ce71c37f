"""`stream: true`: chunks pass through as they come; a final chunk carries `calibration`."""

from __future__ import annotations

import json
import math
import threading
import time

import httpx
import pytest

from tests.conftest import start_gateway
from tests.upstream_double import Gate, StreamReply, chat_stream, completion_stream

STEPS = [
    (" B", -0.40, [(" B", -0.40), (" A", -1.60), (" C", -3.00), (" D", -4.20)]),
    (".", -0.02, [(".", -0.02), ("!", -4.5)]),
]


def events(response: httpx.Response) -> list:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def stream_chat(client, model="mcq", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "?"}], "stream": True}
    return client.stream("POST", "/v1/chat/completions", json={**body, **extra})


def test_final_chunk_carries_calibration_before_done(client, double):
    double.reply = StreamReply(chat_stream(STEPS))
    with stream_chat(client) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        got = events(r)
    assert got[-1] == "[DONE]"
    final = got[-2]
    assert final["choices"] == []
    assert final["object"] == "chat.completion.chunk"
    assert final["id"] == got[0]["id"] and final["model"] == "mcq" and final["created"]
    cal = final["calibration"]
    assert cal["id"] == final["id"]
    assert cal["answer"] == "B"
    values = [-1.60, -0.40, -3.00, -4.20]
    z = sum(math.exp(v) for v in values)
    assert cal["confidence"] == pytest.approx(math.exp(-0.40) / z, abs=1e-12)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got[:-2] if c["choices"])
    assert text == " B."


def test_chunks_are_not_buffered(client, double):
    gate = Gate(timeout=10)
    chunks = chat_stream(STEPS)
    double.reply = StreamReply([chunks[0], chunks[1], gate, *chunks[2:]])
    seen_before_gate = threading.Event()
    with stream_chat(client) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: ") and '" B"' in line:
                # The token chunk arrived while the double is still holding the rest back.
                assert gate.reached.is_set() and not gate.timed_out
                seen_before_gate.set()
                gate.open()
                break
        rest = [line for line in lines if line.startswith("data: ")]
    assert seen_before_gate.is_set()
    assert not gate.timed_out
    assert rest[-1] == "data: [DONE]"


def test_a_client_that_leaves_mid_stream_stops_the_relay(double, tmp_path):
    """The client closes the connection after the first chunk, while the upstream holds the
    rest back: the gateway stops relaying and closes its upstream connection at once (it does
    not read the answer to its end for nobody) and records nothing for that response. Its
    upstream timeout is long here, so only the client's leaving can end the stream."""
    gateway = start_gateway(double.base_url, tmp_path / "calib.db", upstream_timeout_s=60.0)
    try:
        gate = Gate(timeout=30)
        chunks = chat_stream(STEPS)
        double.reply = StreamReply([chunks[0], gate, *chunks[1:]])
        with httpx.Client(base_url=gateway.url, timeout=10.0) as client:
            with stream_chat(client) as r:
                first = next(line for line in r.iter_lines() if line.startswith("data: "))
            response_id = json.loads(first[6:])["id"]
            assert gate.abandoned.wait(10), "the gateway kept reading a stream nobody reads"
            gate.open()  # (releases the double's waiting thread)
            double.reply = StreamReply(chat_stream(STEPS))  # and the gateway serves on
            with stream_chat(client) as r:
                got = events(r)
        assert got[-1] == "[DONE]"
        store = gateway.app.state.store
        later = got[-2]["calibration"]["id"]
        deadline = time.monotonic() + 10
        while store.get_prediction(later) is None and time.monotonic() < deadline:
            time.sleep(0.02)  # written in submission order: the one before would be there too
        assert store.get_prediction(later) is not None
        assert store.get_prediction(response_id) is None
    finally:
        gateway.server.stop()


def test_logprobs_stripped_from_chunks_unless_asked(client, double):
    double.reply = StreamReply(chat_stream(STEPS))
    with stream_chat(client) as r:
        got = events(r)
    assert all(c["choices"][0]["logprobs"] is None for c in got[:-2] if c["choices"])

    double.reply = StreamReply(chat_stream(STEPS))
    with stream_chat(client, logprobs=True, top_logprobs=1) as r:
        got = events(r)
    token_chunks = [c for c in got[:-2] if c["choices"] and c["choices"][0]["logprobs"]]
    assert [
        len(c["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) for c in token_chunks
    ] == [1, 1]


def test_stream_request_asks_upstream_for_logprobs(client, double):
    with stream_chat(client) as r:
        events(r)
    assert double.last.json["stream"] is True
    assert double.last.json["logprobs"] is True and double.last.json["top_logprobs"] == 20


def test_replace_degrades_to_annotate_when_streaming(client, double):
    double.reply = StreamReply(chat_stream(STEPS))
    with stream_chat(client, calibration={"threshold": 0.99, "abstain": "replace"}) as r:
        got = events(r)
    cal = got[-2]["calibration"]
    assert cal["abstained"] is True and cal["abstain_reason"] == "below_threshold"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in got[:-2] if c["choices"])
    assert text == " B."


def test_stream_without_logprobs_degrades(client, double):
    double.reply = StreamReply(chat_stream(STEPS, logprobs=False))
    with stream_chat(client) as r:
        assert r.status_code == 200, r.read()
        got = events(r)
    assert got[-1] == "[DONE]", got
    assert got[-2]["calibration"]["confidence"] is None
    assert got[-2]["calibration"]["reason"] == "upstream_returned_no_logprobs"


def test_dropped_stream_ends_with_an_error_event(client, double):
    double.reply = StreamReply(chat_stream(STEPS)[:2], drop=True)
    with stream_chat(client) as r:
        got = events(r)
    assert "[DONE]" not in got
    assert got[-1]["error"]["type"] == "upstream_error"
    assert client.get("/healthz").status_code == 200


def test_stalled_stream_ends_with_a_timeout_error_event(client, double):
    from tests.upstream_double import Pause

    double.reply = StreamReply([chat_stream(STEPS)[0], Pause(3.0)])
    with stream_chat(client) as r:
        got = events(r)
    assert got[-1]["error"]["type"] == "upstream_timeout_error"


def test_legacy_completions_stream(client, double):
    double.reply = StreamReply(completion_stream(STEPS))
    body = {"model": "mcq", "prompt": "?", "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        got = events(r)
    assert got[-1] == "[DONE]"
    assert got[-2]["object"] == "text_completion"
    assert got[-2]["calibration"]["answer"] == "B"
    assert all(c["choices"][0]["logprobs"] is None for c in got[:-2])


def test_streamed_prediction_is_recorded(client, double, gateway):
    import time

    double.reply = StreamReply(chat_stream(STEPS))
    with stream_chat(client) as r:
        cid = events(r)[-2]["calibration"]["id"]
    store = gateway.app.state.store
    deadline = time.monotonic() + 5
    while store.get_prediction(cid) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.get_prediction(cid).answer == "B"
