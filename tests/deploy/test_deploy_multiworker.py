"""`calib serve --workers 2`: every scrape, whichever worker answers it, reports the requests of
both workers (prometheus-client multiprocess mode, see docs/metrics.md)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.deploy

START_TIMEOUT_S = 120.0
MAX_REQUESTS = 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port, dead_upstream = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALIB_", "PROMETHEUS_"))}
    env["CALIB_DATA_DIR"] = str(tmp_path)
    # Configured, so it has a `model` label of its own (the upstream is down: it lists nothing).
    env["CALIB_MODELS"] = '{"mw": {}}'
    calib = Path(sys.executable).with_name("calib")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            str(calib),
            "serve",
            "--workers",
            "2",
            "--port",
            str(port),
            "--upstream",
            f"http://127.0.0.1:{dead_upstream}/v1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the workers stop with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not start in time"
            time.sleep(0.25)
        yield url, tmp_path / "prometheus-multiproc"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of `name` for model "mw", keyed by its sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("model") == "mw"
    }


def _workers_that_served(multiproc_dir: Path) -> int:
    """Worker processes whose own counter file holds a request for model "mw".

    Counting files is not enough: every worker may create its file at start-up (the writer's
    metrics sync), before it served anything.
    """
    served = 0
    for path in multiproc_dir.glob("counter_*.db"):
        values = MmapedDict.read_all_values_from_file(str(path))
        if any(
            "calib_requests_total" in key and '"mw"' in key and value > 0
            for key, value, *_ in values
        ):
            served += 1
    return served


def _requests_total(text: str) -> float:
    return sum(_samples(text, "calib_requests_total").values())


def test_every_scrape_sums_both_workers(two_workers: tuple[str, Path]) -> None:
    url, multiproc_dir = two_workers
    body = {"model": "mw", "messages": [{"role": "user", "content": "hi"}]}
    sent = 0
    # New connection per request, until both workers have served some.
    while sent < MAX_REQUESTS and _workers_that_served(multiproc_dir) < 2:
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10)
        assert response.status_code == 502  # the upstream is down: counted, kind=connect
        sent += 1
    assert _workers_that_served(multiproc_dir) >= 2, "one worker served everything"
    assert sent > 0
    for _ in range(10):  # scrapes land on either worker
        text = httpx.get(f"{url}/metrics", timeout=10).text
        assert _requests_total(text) == sent
        errors = _samples(text, "calib_upstream_errors_total")
        assert errors.get((("kind", "connect"), ("model", "mw"))) == sent, errors
