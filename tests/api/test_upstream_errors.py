"""What the client sees when the upstream fails: the right status in OpenAI's error shape."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.conftest import start_gateway
from tests.upstream_double import Drop, JSONReply, RawReply, Stall, chat_response

BODY = {"model": "mcq", "messages": [{"role": "user", "content": "?"}]}


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    return error


def test_upstream_timeout_is_504(client, double):
    double.reply = Stall(3.0, then=JSONReply(chat_response(None, content="late")))
    assert_openai_error(client.post("/v1/chat/completions", json=BODY), 504)


def test_upstream_garbage_is_502(client, double):
    double.reply = RawReply(b"<html>oops</html>", 200, "text/html")
    error = assert_openai_error(client.post("/v1/chat/completions", json=BODY), 502)
    assert "not JSON" in error["message"]


def test_upstream_json_that_is_not_an_object_is_502(client, double):
    double.reply = JSONReply([1, 2, 3])
    assert_openai_error(client.post("/v1/chat/completions", json=BODY), 502)


def test_upstream_dropping_the_connection_is_502(client, double):
    double.reply = Drop()
    assert_openai_error(client.post("/v1/chat/completions", json=BODY), 502)


@pytest.mark.parametrize("status", [400, 404, 422, 429, 500, 503])
def test_upstream_status_and_message_are_passed_on(client, double, status):
    double.reply = JSONReply(
        {"error": {"message": f"engine says {status}", "type": "X", "param": None, "code": status}},
        status,
    )
    error = assert_openai_error(client.post("/v1/chat/completions", json=BODY), status)
    assert error["message"] == f"engine says {status}"


def test_vllm_flat_error_shape_is_understood(client, double):
    double.reply = JSONReply(
        {
            "object": "error",
            "message": "max_tokens is too large",
            "type": "BadRequestError",
            "param": "max_tokens",
            "code": 400,
        },
        400,
    )
    error = assert_openai_error(client.post("/v1/chat/completions", json=BODY), 400)
    assert error["message"] == "max_tokens is too large" and error["param"] == "max_tokens"


def test_unknown_model_passes_the_upstreams_404(client, double):
    double.known_models = {"test-model"}
    body = {**BODY, "model": "no-such-model"}
    error = assert_openai_error(client.post("/v1/chat/completions", json=body), 404)
    assert "no-such-model" in error["message"]


def test_stream_request_upstream_error_keeps_its_status(client, double):
    double.reply = JSONReply({"error": {"message": "bad stream", "type": "X"}}, 400)
    r = client.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert assert_openai_error(r, 400)["message"] == "bad stream"


def test_connection_refused_is_502(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    gw = start_gateway(f"http://127.0.0.1:{dead_port}/v1", tmp_path / "calib.db")
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            assert_openai_error(c.post("/v1/chat/completions", json=BODY), 502)
            r = c.post("/v1/chat/completions", json={**BODY, "stream": True})
            assert_openai_error(r, 502)
            assert_openai_error(c.get("/v1/models"), 502)
            ready = c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["store"] == "ok"
            assert ready.json()["checks"]["upstream"].startswith("error")
            assert c.get("/healthz").status_code == 200
    finally:
        gw.server.stop()
