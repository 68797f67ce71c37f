"""The retry rule end to end: a generation request reaches the upstream at most once.

The gateway runs in front of `WireUpstream`, a raw loopback server that controls its
connections (tests/wire_upstream.py). The rule itself is in service/proxy/_upstream_http.py and
docs/configuration.md; the client-level cases are in tests/unit/test_upstream_http.py.
"""

from __future__ import annotations

import httpx

from tests.conftest import start_gateway
from tests.upstream_double import chat_response
from tests.wire_upstream import WireUpstream, http_json

BODY = {"model": "plain", "messages": [{"role": "user", "content": "Capital of France?"}]}


def _answer(n: int, head: bytes, body: bytes) -> bytes:
    return http_json(chat_response(None, model="plain", content=f"Paris {n}"))


def _posts(server: WireUpstream) -> list[str]:
    return [p for p in server.paths() if p.startswith("POST")]


def test_an_upstream_closing_idle_connections_serves_every_request_once(tmp_path):
    """Like uvicorn with a keep-alive timeout shorter than the gateway's: each idle connection
    is closed by the server before the next request; every request still succeeds, once."""
    with WireUpstream(_answer, idle_close_s=0.2) as server:
        gw = start_gateway(server.base_url, tmp_path / "calib.db", refit_enabled=False)
        try:
            with httpx.Client(base_url=gw.url, timeout=30) as http:
                for n in (1, 2, 3):
                    response = http.post("/v1/chat/completions", json=BODY)
                    assert response.status_code == 200, response.text
                    assert response.json()["choices"][0]["message"]["content"] == f"Paris {n}"
                    server.wait_closed(n)  # the server's keep-alive timer closed it
        finally:
            gw.server.stop()
        assert _posts(server) == ["POST /v1/chat/completions"] * 3  # no request twice
        assert server.connections == 3  # each closed connection was replaced, not retried on


def test_an_upstream_that_read_the_request_and_closed_gets_it_once_and_the_client_a_502(
    tmp_path,
):
    """The second generation is read in full on a reused connection, then the connection
    closes unanswered (an engine crash mid-request). The gateway must not send it again."""

    def answer(n: int, head: bytes, body: bytes) -> bytes | None:
        return None if n == 2 else _answer(n, head, body)

    with WireUpstream(answer) as server:
        gw = start_gateway(server.base_url, tmp_path / "calib.db", refit_enabled=False)
        try:
            with httpx.Client(base_url=gw.url, timeout=30) as http:
                assert http.post("/v1/chat/completions", json=BODY).status_code == 200
                failed = http.post("/v1/chat/completions", json=BODY)
                assert failed.status_code == 502, failed.text
                error = failed.json()["error"]
                assert error["code"] == "upstream_connection_error"
                assert _posts(server) == ["POST /v1/chat/completions"] * 2  # once each
                # The gateway recovers on a new connection.
                third = http.post("/v1/chat/completions", json=BODY)
                assert third.status_code == 200
                assert third.json()["choices"][0]["message"]["content"] == "Paris 3"
        finally:
            gw.server.stop()
        assert _posts(server) == ["POST /v1/chat/completions"] * 3


def test_a_stream_request_the_upstream_read_is_not_sent_again(tmp_path):
    def answer(n: int, head: bytes, body: bytes) -> bytes | None:
        return None if n == 2 else _answer(n, head, body)

    with WireUpstream(answer) as server:
        gw = start_gateway(server.base_url, tmp_path / "calib.db", refit_enabled=False)
        try:
            with httpx.Client(base_url=gw.url, timeout=30) as http:
                assert http.post("/v1/chat/completions", json=BODY).status_code == 200
                failed = http.post("/v1/chat/completions", json={**BODY, "stream": True})
                assert failed.status_code == 502, failed.text
        finally:
            gw.server.stop()
        assert _posts(server) == ["POST /v1/chat/completions"] * 2
