"""Keys are stored hashed and never logged; prompts and images are not logged by default;
`/metrics` can be put behind its own key."""

from __future__ import annotations

import base64
import logging
import sqlite3

import pytest

from tests.conftest import start_gateway
from tests.security.conftest import SecureGateway
from tests.upstream_double import JSONReply, chat_response

PROMPT_MARK = "PROMPT-SECRET-5e1d0c"
# A tiny PNG header + a marker: enough for the gateway's data-URL checks.
IMAGE_BYTES = b"\x89PNG\r\n\x1a\n" + b"IMAGE-SECRET-77aa" * 4
IMAGE_URL = "data:image/png;base64," + base64.b64encode(IMAGE_BYTES).decode()


@pytest.fixture
def all_logs(caplog):
    """Capture every record of every logger at DEBUG (uvicorn's threads included)."""
    caplog.set_level(logging.DEBUG)
    for name in ("service", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield caplog
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_keys_and_request_bodies_never_reach_the_logs(secure: SecureGateway, double, all_logs):
    new_key, record = secure.store.create_key("log-probe", "client", tenant="acme")
    double.reply = JSONReply(chat_response(None, content="B"))
    body = {
        "model": "mcq",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": PROMPT_MARK},
                    {"type": "image_url", "image_url": {"url": IMAGE_URL}},
                ],
            }
        ],
    }
    with secure.client(new_key) as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        assert http.post("/v1/completions", json={"model": "x", "prompt": PROMPT_MARK}).is_success
        assert http.post("/v1/feedback", json={"id": "unknown", "label": PROMPT_MARK}).status_code
        # Failures log too: an upstream error, a bad body, a wrong key.
        double.reply = JSONReply({"error": {"message": "boom"}}, 500)
        assert http.post("/v1/chat/completions", json=body).status_code == 500
        assert http.post("/v1/chat/completions", content=b"{" + PROMPT_MARK.encode()).is_error
    with secure.client(new_key + "x") as wrong:
        assert wrong.get("/v1/models").status_code == 401
    secure.store.revoke_key("log-probe")

    text = all_logs.text + "".join(str(r.args) for r in all_logs.records)
    assert all_logs.records, "nothing was captured: the check would prove nothing"
    for secret in (new_key, new_key[len(record.prefix) :], secure.keys.admin):
        assert secret not in text
    assert PROMPT_MARK not in text
    assert "IMAGE-SECRET" not in text and IMAGE_URL[30:60] not in text


def test_the_database_holds_only_key_hashes(secure: SecureGateway):
    plaintext, record = secure.store.create_key("hash-probe", "client", tenant="acme")
    db = secure.store.engine.url.database
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT * FROM api_keys WHERE id = ?", (record.id,)).fetchall()
    flat = " ".join(str(v) for v in rows[0])
    assert plaintext not in flat and plaintext[len(record.prefix) :] not in flat


def test_prompts_are_not_stored_by_default(secure: SecureGateway, double):
    double.reply = JSONReply(chat_response(None, content="B"))
    with secure.client(secure.keys.acme) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "mcq", "messages": [{"role": "user", "content": PROMPT_MARK}]},
        )
    pid = response.json()["calibration"]["id"]
    writer = secure.gw.app.state.writer
    import time

    deadline = time.monotonic() + 5
    while writer.is_pending(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert secure.store.get_prediction(pid).request_content is None


# ----------------------------------------------------------------------- /metrics key


@pytest.fixture(scope="module")
def metrics_gateway(upstream_double, tmp_path_factory):
    gw = start_gateway(
        upstream_double.base_url,
        tmp_path_factory.mktemp("metrics-key") / "calib.db",
        refit_enabled=False,
        metrics_key="scrape-secret-123",
    )
    yield gw
    gw.server.stop()


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Basic c2NyYXBlLXNlY3JldC0xMjM=", "Bearer scrape"]
)
def test_metrics_behind_a_key_refuse_other_callers(metrics_gateway, header):
    import httpx

    headers = {"Authorization": header} if header else {}
    response = httpx.get(f"{metrics_gateway.url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert "calib_" not in response.text


def test_metrics_behind_a_key_serve_the_scraper(metrics_gateway):
    import httpx

    response = httpx.get(
        f"{metrics_gateway.url}/metrics",
        headers={"Authorization": "Bearer scrape-secret-123"},
        timeout=10,
    )
    assert response.status_code == 200
    assert "calib_requests_total" in response.text or "calib_" in response.text


def test_metrics_are_open_without_a_metrics_key(secure: SecureGateway):
    import httpx

    assert httpx.get(f"{secure.url}/metrics", timeout=10).status_code == 200
