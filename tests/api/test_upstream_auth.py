"""Upstream authentication: a key-protected engine (`vllm serve --api-key`) behind the gateway.

The upstream doubles here are real loopback servers that answer 401 `{"error": "Unauthorized"}`
to any `/v1` request without the right `Authorization: Bearer` header, as vLLM does. Every kind
of upstream call is covered: proxy (fast path and FastAPI route, plain and streamed), `/readyz`,
`/v1/models`, prompt-optimization replay and paraphrasing, per-model upstreams and key files,
and `calib serve`'s flags.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.proxy import ProxyFastPath
from service.settings import load_settings
from tests.conftest import GATEWAY_MODELS, UPSTREAM_TIMEOUT_S, Gateway, start_gateway
from tests.upstream_double import (
    JSONReply,
    ServerThread,
    UpstreamDouble,
    legacy_steps,
)

KEY = "sk-vllm-global-3c1f0a"  # the global upstream's key (given to the gateway as a file)
OTHER_KEY = "sk-vllm-other-9b2e77"  # the per-model upstream's key
ADMIN = "sk-calib-admin-auth-test"  # the gateway's own admin key (the client's credential)

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "Capital of France?"}]}
LEGACY = {"model": "test-model", "prompt": "The capital of France is", "logprobs": 1}


@pytest.fixture(scope="module")
def other() -> Iterator[UpstreamDouble]:
    """A second engine, serving `big/model` behind its own key."""
    double = UpstreamDouble().start()
    yield double
    double.stop()


@pytest.fixture
def remote(other: UpstreamDouble) -> Iterator[UpstreamDouble]:
    other.reset()
    other.api_key = OTHER_KEY
    other.models = ["big/model", "unrelated"]
    yield other
    other.reset()


@pytest.fixture
def keyed(double: UpstreamDouble) -> UpstreamDouble:
    """The session double, now requiring the global key."""
    double.api_key = KEY
    return double


def _models(other: UpstreamDouble, key_file: Path) -> dict[str, dict]:
    return {
        **GATEWAY_MODELS,
        "remote": {"upstream": other.base_url, "served_name": "big/model", "api_key": OTHER_KEY},
        "remote-file": {
            "upstream": other.base_url,
            "served_name": "big/model",
            "api_key_file": str(key_file),
        },
        "remote-nokey": {"upstream": other.base_url, "served_name": "big/model"},
    }


@pytest.fixture(scope="module")
def key_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    (folder / "global.key").write_text(f"{KEY}\n")  # a trailing newline, as `echo` writes it
    (folder / "other.key").write_text(f"  {OTHER_KEY}\n")
    return folder / "global.key", folder / "other.key"


@pytest.fixture(scope="module")
def gw(upstream_double, other, key_files, tmp_path_factory) -> Iterator[Gateway]:
    """A gateway with the global key from a file, per-model keys, and its own admin key."""
    global_key, other_key = key_files
    gateway = start_gateway(
        upstream_double.base_url,
        tmp_path_factory.mktemp("upstream-auth") / "calib.db",
        upstream_api_key_file=global_key,
        admin_key=ADMIN,
        refit_enabled=False,
        models=_models(other, other_key),
    )
    yield gateway
    gateway.server.stop()


@pytest.fixture
def http(gw: Gateway, keyed: UpstreamDouble) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=30.0) as client:
        yield client


def _stream_events(client: httpx.Client, path: str, body: dict) -> list:
    events = []
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def _exercise_every_route(client: httpx.Client) -> None:
    chat = client.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["content"] == "Paris."
    legacy = client.post("/v1/completions", json=LEGACY)
    assert legacy.status_code == 200, legacy.text
    assert _stream_events(client, "/v1/chat/completions", CHAT)[-1]["calibration"]
    assert _stream_events(client, "/v1/completions", LEGACY)[-1]["calibration"]
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    models = client.get("/v1/models")
    assert models.status_code == 200, models.text


def _authorizations(double: UpstreamDouble) -> set[str | None]:
    return {r.headers.get("authorization") for r in double.requests}


# ------------------------------------------------------------------------- the global key


def test_without_the_key_every_upstream_call_is_refused_and_the_gateway_says_why(client, double):
    """The default test gateway has no upstream key; the engine wants one."""
    double.api_key = KEY
    chat = client.post("/v1/chat/completions", json=CHAT)
    assert chat.status_code == 502, chat.text  # not 401: the caller's own key is fine
    error = chat.json()["error"]
    assert "refused the gateway's credentials" in error["message"] and "401" in error["message"]
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 502
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "401" in ready.json()["checks"]["upstream"]
    assert client.get("/v1/models").status_code == 502
    assert double.unauthorized == len(double.requests) == 4
    assert _authorizations(double) == {None}


def test_every_upstream_call_carries_the_key_from_the_key_file(http, keyed):
    _exercise_every_route(http)
    assert keyed.unauthorized == 0
    paths = {(r.method, r.path) for r in keyed.requests}
    assert paths == {
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
    }
    assert _authorizations(keyed) == {f"Bearer {KEY}"}


def test_the_fastapi_routes_send_the_key_too(upstream_double, keyed, key_files, tmp_path):
    """The same app with the ASGI fast path taken out: the FastAPI routes serve the proxy."""
    settings = load_settings(
        upstream=upstream_double.base_url,
        db=f"sqlite:///{tmp_path / 'calib.db'}",
        data_dir=tmp_path,
        upstream_timeout_s=UPSTREAM_TIMEOUT_S,
        upstream_api_key_file=key_files[0],
        refit_enabled=False,
    )
    app = create_app(settings)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not ProxyFastPath]
    assert all(m.cls is not ProxyFastPath for m in app.user_middleware)
    server = ServerThread(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            _exercise_every_route(client)
    finally:
        server.stop()
    assert keyed.unauthorized == 0 and _authorizations(keyed) == {f"Bearer {KEY}"}


def test_the_callers_own_authorization_is_never_forwarded(http, client, keyed):
    """The gateway's API key authenticates the caller to the gateway; the engine sees only the
    gateway's upstream key (or nothing when none is configured)."""
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert keyed.last.headers["authorization"] == f"Bearer {KEY}"
    assert ADMIN not in json.dumps(keyed.last.headers)

    keyed.api_key = None  # the default test gateway: open mode, no upstream key
    sent = {"Authorization": "Bearer sk-client-own-5a5a", "x-custom": "yes"}
    assert client.post("/v1/chat/completions", json=CHAT, headers=sent).status_code == 200
    assert "authorization" not in keyed.last.headers
    assert "x-custom" not in keyed.last.headers


# ---------------------------------------------------------------------- per-model upstreams


@pytest.mark.parametrize("model", ["remote", "remote-file"])
def test_a_model_on_another_upstream_sends_that_upstreams_key(http, keyed, remote, model):
    body = {**CHAT, "model": model}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    assert _stream_events(http, "/v1/chat/completions", body)[-1]["calibration"]
    assert remote.unauthorized == 0
    assert _authorizations(remote) == {f"Bearer {OTHER_KEY}"}
    assert {r.json["model"] for r in remote.requests} == {"big/model"}
    assert keyed.requests == []  # nothing went to the global upstream


def test_the_global_key_is_never_sent_to_another_host(http, keyed, remote):
    """`remote-nokey` lives on the other engine and has no key of its own: it gets no key (and
    that engine refuses it), rather than the global upstream's key."""
    response = http.post("/v1/chat/completions", json={**CHAT, "model": "remote-nokey"})
    assert response.status_code == 502
    assert _authorizations(remote) == {None}
    assert remote.unauthorized == 1


def test_models_are_listed_from_every_upstream_with_its_key(http, keyed, remote):
    listed = http.get("/v1/models")
    assert listed.status_code == 200, listed.text
    by_id = {m["id"]: m for m in listed.json()["data"]}
    # Both configured names for the other engine's `big/model`, with that engine's fields.
    assert by_id["remote"]["owned_by"] == by_id["remote-file"]["owned_by"] == "double"
    assert by_id["remote-nokey"]["id"] == "remote-nokey"
    assert "big/model" not in by_id and "unrelated" not in by_id  # not reachable by that name
    assert by_id["aliased"]["owned_by"] == "double"  # `test-model` on the global upstream
    assert set(GATEWAY_MODELS) <= set(by_id)
    assert f"Bearer {OTHER_KEY}" in _authorizations(remote)
    assert _authorizations(keyed) == {f"Bearer {KEY}"}
    assert OTHER_KEY not in listed.text and KEY not in listed.text


def test_a_failing_per_model_upstream_does_not_fail_the_model_list(http, keyed, remote):
    remote.reply = JSONReply({"error": {"message": "down"}}, 503)
    remote.models = []
    listed = http.get("/v1/models")
    assert listed.status_code == 200
    by_id = {m["id"]: m for m in listed.json()["data"]}
    assert by_id["remote"]["owned_by"] == "mllm-calib"  # configured, so still listed


# ------------------------------------------------------------------- prompt optimization


def _items(n: int = 8) -> list[dict]:
    return [
        {"id": f"q{i}", "prompt": f"Q{i}\nA. yes\nB. no\nAnswer:", "options": ["A", "B"],
         "answer": "AB"[i % 2]}
        for i in range(n)
    ]  # fmt: skip


def _tiny_model(path: str, body: dict) -> JSONReply:
    """Paraphrase requests get one paraphrase; evaluations answer " A"."""
    if "\nParaphrase:" in body.get("prompt", ""):
        choices = [{"index": 0, "text": " Say the letter", "finish_reason": "stop"}]
    else:
        steps = [(" A", -0.2, [(" A", -0.2), (" B", -1.7)])]
        choices = [
            {"index": 0, "text": " A", "logprobs": legacy_steps(steps), "finish_reason": "stop"}
        ]
    return JSONReply({"id": "c", "object": "text_completion", "choices": choices})


def _run_job(client: httpx.Client, model: str, **extra: object) -> dict:
    payload = {"items": _items(), "seeds": ["Answer."], "k": 1, "m": 1, "n": 1, **extra}
    started = client.post(f"/v1/calibration/models/{model}/prompt-optimizations", json=payload)
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = client.get(started.json()["status_url"]).json()
        if view["status"] in ("succeeded", "rejected", "failed"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job did not finish: {view}")


def test_prompt_optimization_replays_and_paraphrases_with_the_key(http, keyed):
    keyed.reply = _tiny_model
    view = _run_job(http, "opt-keyed")
    assert view["status"] in ("succeeded", "rejected"), view
    prompts = [r.json.get("prompt", "") for r in keyed.requests]
    assert any("\nParaphrase:" in p for p in prompts)  # the paraphraser called it
    assert any("\nParaphrase:" not in p for p in prompts)  # and the replay
    assert keyed.unauthorized == 0 and _authorizations(keyed) == {f"Bearer {KEY}"}


def test_prompt_optimization_for_a_per_model_upstream_uses_each_urls_key(http, keyed, remote):
    """Items replay on the model's engine with its key; a paraphraser on the global upstream
    gets the global key: each URL its own key, never another's."""
    keyed.reply = remote.reply = _tiny_model
    view = _run_job(http, "remote", paraphraser={"url": keyed.base_url, "model": "test-model"})
    assert view["status"] in ("succeeded", "rejected"), view
    assert remote.requests and keyed.requests
    assert all("\nParaphrase:" not in r.json.get("prompt", "") for r in remote.requests)
    assert all("\nParaphrase:" in r.json.get("prompt", "") for r in keyed.requests)
    assert _authorizations(remote) == {f"Bearer {OTHER_KEY}"}
    assert _authorizations(keyed) == {f"Bearer {KEY}"}
    assert "upstream" not in view["config"]  # the stored job config shows no URL (nor key)


def test_prompt_optimization_without_the_key_fails_with_the_upstreams_401(client, double):
    double.api_key = KEY
    double.reply = _tiny_model
    view = _run_job(client, "opt-nokey")
    assert view["status"] == "failed"
    assert "401" in view["error"]


# ------------------------------------------------------------------------------ calib serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_calib_serve_takes_the_key_from_flags_and_environment(keyed, key_files, tmp_path):
    """`--upstream-api-key-file` beats `CALIB_UPSTREAM_API_KEY` (flags > env); the key from
    either reaches the engine; a wrong key is refused by it."""
    port = _free_port()
    env = {**os.environ, "CALIB_DATA_DIR": str(tmp_path), "CALIB_UPSTREAM_API_KEY": "wrong"}
    command = [
        sys.executable, "-m", "clients.cli", "serve", "--port", str(port),
        "--upstream", keyed.base_url, "--db", f"sqlite:///{tmp_path / 'c.db'}",
        "--upstream-api-key-file", str(key_files[0]),
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert ready.status_code == 200, ready.text
        chat = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, timeout=10)
        assert chat.status_code == 200, chat.text
    finally:
        proc.terminate()
        output = proc.communicate(timeout=15)[0].decode()
    assert keyed.unauthorized == 0 and _authorizations(keyed) == {f"Bearer {KEY}"}
    assert KEY not in output


def test_calib_serve_reports_an_unreadable_key_file_without_a_traceback(tmp_path):
    env = {**os.environ, "CALIB_DATA_DIR": str(tmp_path)}
    missing = tmp_path / "no-such.key"
    proc = subprocess.run(
        [sys.executable, "-m", "clients.cli", "serve", "--upstream-api-key-file", str(missing)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert b"invalid settings" in proc.stderr and str(missing).encode() in proc.stderr
    assert b"Traceback" not in proc.stderr
