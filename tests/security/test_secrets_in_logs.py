"""Keys are stored hashed and never logged; prompts and images are not logged by default;
`/metrics` can be put behind its own key."""

from __future__ import annotations

import base64
import logging
import sqlite3
import time

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


# ------------------------------------------------------------------------ the upstream key

UPSTREAM_SECRET = "sk-upstream-never-shown-8e8e"


@pytest.fixture(scope="module")
def upstream_keyed_gateway(upstream_double, tmp_path_factory):
    gw = start_gateway(
        upstream_double.base_url,
        tmp_path_factory.mktemp("upstream-key") / "calib.db",
        refit_enabled=False,
        upstream_api_key=UPSTREAM_SECRET,
    )
    yield gw
    gw.server.stop()


def test_the_upstream_key_never_reaches_logs_error_bodies_or_metrics(
    upstream_keyed_gateway, double, all_logs
):
    """An engine that echoes the request's Authorization header in its errors (some proxies
    and debug servers do): the gateway blanks its key before anything reaches the client, the
    job store, the logs or /metrics."""
    import httpx

    logging.getLogger("httpcore").setLevel(logging.DEBUG)
    double.api_key = UPSTREAM_SECRET

    def echo(status):
        def reply(path, body):
            seen = double.last.headers.get("authorization", "")
            return JSONReply({"error": {"message": f"rejected {seen}", "type": "x"}}, status)

        return reply

    chat = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
    seen: list[str] = []
    try:
        with httpx.Client(base_url=upstream_keyed_gateway.url, timeout=30) as http:
            double.reply = JSONReply(chat_response(None, content="B"))
            assert http.post("/v1/chat/completions", json=chat).status_code == 200
            for status in (500, 401, 400):
                double.reply = echo(status)
                for body in (chat, {**chat, "stream": True}):
                    response = http.post("/v1/chat/completions", json=body)
                    assert response.status_code in (status, 502), response.text
                    assert "rejected" in response.text  # the engine's message is passed on...
                    seen.append(response.text)
            # /readyz and /v1/models when the engine's list answers with the key in it.
            double.reply = JSONReply({"error": {"message": f"no {UPSTREAM_SECRET}"}}, 500)
            ready = http.get("/readyz")
            models = http.get("/v1/models")
            assert ready.status_code == 503 and models.status_code == 500
            seen += [ready.text, models.text]
            # A prompt-optimization job whose replay fails stores the engine's answer.
            double.reply = echo(500)
            items = [
                {"id": f"q{i}", "prompt": f"Q{i}", "options": ["A", "B"], "answer": "A"}
                for i in range(6)
            ]
            started = http.post(
                "/v1/calibration/models/test-model/prompt-optimizations",
                json={"items": items, "seeds": ["Answer."], "k": 1, "m": 1, "n": 0},
            )
            assert started.status_code == 202
            for _ in range(600):
                view = http.get(started.json()["status_url"])
                if view.json()["status"] == "failed":
                    break
                time.sleep(0.05)
            assert view.json()["status"] == "failed" and "rejected" in view.json()["error"]
            seen.append(view.text)
            seen.append(http.get("/metrics").text)
    finally:
        logging.getLogger("httpcore").setLevel(logging.NOTSET)

    # The key did travel to the engine (the check below would be empty otherwise) ...
    assert {r.headers.get("authorization") for r in double.requests} == {
        f"Bearer {UPSTREAM_SECRET}"
    }
    # ... and came back from it, but never out of the gateway.
    for text in seen:
        assert UPSTREAM_SECRET not in text
    assert "***" in seen[1]  # blanked, not dropped: the engine's message is still useful
    logs = all_logs.text + "".join(str(r.args) for r in all_logs.records)
    assert all_logs.records
    assert UPSTREAM_SECRET not in logs
    settings = upstream_keyed_gateway.app.state.settings
    assert UPSTREAM_SECRET not in repr(settings) and UPSTREAM_SECRET not in str(settings)
