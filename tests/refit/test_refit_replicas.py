"""Two real gateway processes (`calib serve`) on one real PostgreSQL: one refit at a time, and
the other replica serves the new active profile within seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.store import Store
from tests.refit.helpers import OPTIONS, OptionItem, insert_labeled_options
from tests.upstream_double import JSONReply, UpstreamDouble, chat_response

pytestmark = pytest.mark.postgres

PROBE = OptionItem([-0.3, -1.6, -2.9, -4.0], 0, 0)
CALIB = Path(sys.executable).with_name("calib")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(db: str, upstream: str, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {
        **os.environ,
        "CALIB_DATA_DIR": str(data_dir),
        "CALIB_REFIT_ENABLED": "false",
        "CALIB_ADMIN_KEY": "",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (data_dir / f"serve-{port}.log").open("wb")
    args = ["serve", "--port", str(port), "--upstream", upstream, "--db", db]
    process = subprocess.Popen(
        [str(CALIB), *args, "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{port}"


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"calib serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not become healthy")


@pytest.fixture
def replicas(
    pg_url: str, upstream_double: UpstreamDouble, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    Store.open(pg_url).close()  # migrate once up front (both would also race safely)
    started = [_serve(pg_url, upstream_double.base_url, tmp_path) for _ in range(2)]
    try:
        for process, url in started:
            _wait_healthy(url, process)
        yield started[0][1], started[1][1]
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _probe(url: str) -> dict:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "mcq",
            "messages": [{"role": "user", "content": "?"}],
            "calibration": {"options": OPTIONS},
        },
        timeout=10.0,
    )
    assert response.status_code == 200, response.text
    return response.json()["calibration"]


def test_one_replica_refits_and_the_other_serves_the_result(
    replicas: tuple[str, str], pg_url: str, double: UpstreamDouble
) -> None:
    a, b = replicas
    store = Store.open(pg_url)
    try:
        insert_labeled_options(store, "mcq", "default", 30_000, true_t=2.0, seed=5)
        insert_labeled_options(store, "warm", "default", 5, seed=6)
    finally:
        store.close()
    double.reply = JSONReply(chat_response(PROBE.steps(), model="mcq"))

    # Start each replica's refit worker process (so both refits below start at once).
    for url in (a, b):
        warm = httpx.post(f"{url}/v1/calibration/models/warm/refit", timeout=60.0)
        assert warm.json()["status"] == "insufficient_labels", warm.text
    assert _probe(a)["profile_version"] == _probe(b)["profile_version"] == 0

    results: dict[str, httpx.Response] = {}

    def trigger(url: str) -> None:
        results[url] = httpx.post(f"{url}/v1/calibration/models/mcq/refit", timeout=120.0)

    threads = [threading.Thread(target=trigger, args=(url,)) for url in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)

    codes = sorted(response.status_code for response in results.values())
    assert codes == [200, 409], {url: r.text for url, r in results.items()}
    winner = next(url for url, r in results.items() if r.status_code == 200)
    loser = b if winner == a else a
    outcome = results[winner].json()
    assert outcome["status"] == "activated" and outcome["n_labels"] == 30_000
    busy = results[loser].json()["error"]
    assert "another replica is refitting" in busy["message"]
    assert busy["code"] == "refit_in_progress"

    # The replica that did not refit serves the new version within seconds (ProfileCache TTL).
    started = time.monotonic()
    while True:
        cal = _probe(loser)
        if cal["profile_version"] == outcome["version"]:
            break
        assert time.monotonic() - started < 10.0, "the other replica still serves the old profile"
        time.sleep(0.2)
    assert time.monotonic() - started < 5.0
    assert cal["method"] == "temperature"
    assert cal["temperature"] == pytest.approx(outcome["temperature"])

    # Exactly one attempt was recorded for mcq.
    shown = httpx.get(f"{loser}/v1/calibration/models/mcq", timeout=10.0).json()
    refits = [e for e in shown["events"] if e["kind"] == "refit"]
    assert len(refits) == 1 and refits[0]["status"] == "activated"
