"""Upstream faults end to end on ONE gateway process: each fault gives its documented answer, and
the next normal request is served normally — no restart. (The single faults are specified in
tests/api/test_upstream_errors.py and test_streaming.py; here: recovery, and a refused upstream
that comes back.)"""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import start_gateway
from tests.upstream_double import (
    JSONReply,
    Pause,
    RawReply,
    Stall,
    StreamReply,
    UpstreamDouble,
    chat_response,
    chat_stream,
)

STEPS = [(" B", -0.4, [(" B", -0.4), (" A", -1.6), (" C", -3.0), (" D", -4.2)])]
BODY = {"model": "mcq", "messages": [{"role": "user", "content": "Pick one."}]}


def _double_on(port: int) -> UpstreamDouble:
    """An upstream double listening on a chosen port (to bring a refused upstream back)."""
    double = UpstreamDouble()
    server = double._server
    server._sock.close()
    server._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server._sock.bind(("127.0.0.1", port))
    server.port = port
    return double.start()


def _ok(http: httpx.Client) -> dict:
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200, response.text
    calibration = response.json()["calibration"]
    assert calibration["answer"] == "B" and calibration["confidence"] is not None
    return calibration


def _stream(http: httpx.Client) -> list:
    out = []
    with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_every_fault_then_normal_service_on_the_same_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = start_gateway(f"http://127.0.0.1:{port}/v1", tmp_path / "calib.db", refit_enabled=False)
    double = None
    try:
        with httpx.Client(base_url=gw.url, timeout=15) as http:
            # 1. Refused: nothing listens yet.
            _error(http.post("/v1/chat/completions", json=BODY), 502)
            assert http.get("/readyz").status_code == 503
            # ... the engine comes up on that port: served at once, no restart.
            double = _double_on(port)
            double.reply = JSONReply(chat_response(STEPS))
            _ok(http)
            assert http.get("/readyz").status_code == 200

            # 2. Slow past the timeout → 504, then normal.
            double.reply = Stall(3.0, then=JSONReply(chat_response(STEPS)))
            _error(http.post("/v1/chat/completions", json=BODY), 504)
            double.reply = JSONReply(chat_response(STEPS))
            _ok(http)

            # 3. Dropped mid-stream → an error event instead of [DONE], then a full stream.
            double.reply = StreamReply(chat_stream(STEPS)[:2], drop=True)
            events = _stream(http)
            assert "[DONE]" not in events and events[-1]["error"]["type"] == "upstream_error"
            double.reply = StreamReply(chat_stream(STEPS))
            events = _stream(http)
            assert events[-1] == "[DONE]" and events[-2]["calibration"]["answer"] == "B"

            # 4. Garbage → 502, then normal.
            double.reply = RawReply(b"\x00\xffnot json{{", 200, "application/json")
            _error(http.post("/v1/chat/completions", json=BODY), 502)
            double.reply = JSONReply(chat_response(STEPS))
            _ok(http)

            # 5. No logprobs → the answer, degraded (no confidence, a reason), then normal.
            double.reply = JSONReply(chat_response(None, content="B"))
            degraded = http.post("/v1/chat/completions", json=BODY)
            assert degraded.status_code == 200
            assert degraded.json()["choices"][0]["message"]["content"] == "B"
            assert degraded.json()["calibration"]["confidence"] is None
            double.reply = JSONReply(chat_response(STEPS))
            _ok(http)

            # 6. A burst of 5xx from an overloaded engine, concurrent: each passed on as is.
            overloaded = {"error": {"message": "engine overloaded", "type": "X", "code": 503}}
            double.reply = JSONReply(overloaded, 503)

            def one(_: int) -> httpx.Response:
                with httpx.Client(base_url=gw.url, timeout=15) as c:
                    return c.post("/v1/chat/completions", json=BODY)

            with ThreadPoolExecutor(16) as pool:
                burst = list(pool.map(one, range(48)))
            assert {r.status_code for r in burst} == {503}
            assert {r.json()["error"]["message"] for r in burst} == {"engine overloaded"}
            # ... and a stalled stream in the middle of it all.
            double.reply = StreamReply([chat_stream(STEPS)[0], Pause(3.0)])
            assert _stream(http)[-1]["error"]["type"] == "upstream_timeout_error"

            # Recovered: normal answers and streams, concurrently, on the same process.
            double.reply = lambda path, body: (
                (StreamReply(chat_stream(STEPS)) if body.get("stream") else None)
                or JSONReply(chat_response(STEPS))
            )
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(one, range(32)))
            assert {r.status_code for r in answers} == {200}
            assert _stream(http)[-1] == "[DONE]"
            assert http.get("/readyz").status_code == 200
            # Every fault was counted by kind.
            metrics = http.get("/metrics").text
            for kind in ("connect", "timeout", "status", "invalid_response", "stream_dropped"):
                assert f'kind="{kind}"' in metrics, kind
    finally:
        gw.server.stop()
        if double is not None:
            double.stop()
