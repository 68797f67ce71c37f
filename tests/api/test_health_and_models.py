"""`/healthz`, `/readyz`, `/v1/models`, `/docs`, and the `calib serve` command."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from tests.conftest import GATEWAY_MODELS


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_checks_store_and_upstream(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"store": "ok", "upstream": "ok"}


def test_models_list_the_names_clients_use_and_every_configured_model(client, double):
    double.models = ["test-model", "other"]
    try:
        r = client.get("/v1/models")
    finally:
        double.models = ["test-model"]
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    # `aliased` is served as `test-model`: listed under the client's name, with the engine's
    # own fields; the engine's name itself is not offered.
    assert by_id["aliased"]["owned_by"] == "double"
    assert "test-model" not in by_id
    assert by_id["other"]["owned_by"] == "double"  # an unconfigured engine model, unchanged
    # Configured models the engine does not list are still there (conftest.GATEWAY_MODELS).
    assert set(GATEWAY_MODELS) <= set(by_id)
    assert by_id["mcq"]["object"] == "model" and by_id["mcq"]["owned_by"] == "mllm-calib"
    assert len(body["data"]) == len(by_id) == len(GATEWAY_MODELS) + 1  # no duplicates


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"]
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert "calibration" in body["content"]["application/json"]["schema"]["properties"]


def test_calib_serve_starts_a_working_gateway(double, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CALIB_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clients.cli",
            "serve",
            "--port",
            str(port),
            "--upstream",
            double.base_url,
            "--db",
            f"sqlite:///{tmp_path / 'c.db'}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert r.status_code == 200
        chat = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert chat.status_code == 200 and "calibration" in chat.json()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
    assert "OPEN" in out  # the loud open-mode warning
    assert proc.returncode == 0 or proc.returncode == -15


def test_calib_serve_rejects_invalid_settings_cleanly(tmp_path):
    env = {**os.environ, "CALIB_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "clients.cli", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert b"invalid settings" in proc.stderr and b"Traceback" not in proc.stderr


def test_calib_serve_refuses_public_bind_without_keys(double, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CALIB_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.cli",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--upstream",
            double.base_url,
            "--db",
            f"sqlite:///{tmp_path / 'c.db'}",
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode != 0
    output = (proc.stdout + proc.stderr).decode()
    assert "--insecure" in output  # refused for the right reason, and says how to override
