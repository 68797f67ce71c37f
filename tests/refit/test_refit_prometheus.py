"""A real Prometheus scrapes a running gateway: after feedback and a refit, PromQL returns the
calibrated ECE the API reports, and the refit/feedback counters moved."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import start_gateway
from tests.refit.helpers import option_items
from tests.refit.test_refit_api import ask, label

pytestmark = pytest.mark.deploy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_reports_the_ece_the_api_reports(upstream_double, double, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("`prometheus` not installed (apt-get install prometheus)")
    gw = start_gateway(
        upstream_double.base_url,
        tmp_path / "calib.db",
        refit_enabled=False,
        refit_executor="thread",
    )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "mllm-calib-gateway",
                "static_configs": [{"targets": [f"127.0.0.1:{gw.server.port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=gw.url, timeout=60.0) as api:
            items = option_items(600, 2.0, seed=71)
            cals = ask(api, double, items, "prom")
            label(api, cals, items, "label")
            outcome = api.post("/v1/calibration/models/mcq/refit", params={"task": "prom"})
            assert outcome.json()["status"] == "activated", outcome.text
            shown = api.get("/v1/calibration/models/mcq", params={"task": "prom"}).json()
            ece = shown["active"]["metrics"]["calibrated"]["ece"]
            version = shown["active"]["version"]

        _wait_for("prometheus", lambda: httpx.get(f"{prom}/-/ready", timeout=2).is_success)
        series = _wait_for(
            "calib_ece to be scraped",
            lambda: _query(prom, 'calib_ece{stage="calibrated", model="mcq", task="prom"}'),
        )
        assert float(series[0]["value"][1]) == pytest.approx(ece, rel=1e-12)
        version_series = _query(prom, 'calib_profile_version{model="mcq", task="prom"}')
        assert float(version_series[0]["value"][1]) == version
        refits = _query(prom, 'calib_refits_total{model="mcq", outcome="activated"}')
        assert float(refits[0]["value"][1]) >= 1
        feedback = _query(prom, 'sum(calib_feedback_total{model="mcq"})')
        assert float(feedback[0]["value"][1]) >= len(items)
        last = _query(prom, 'calib_last_refit_success_timestamp_seconds{task="prom"}')
        assert abs(float(last[0]["value"][1]) - time.time()) < 300
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
        gw.server.stop()
