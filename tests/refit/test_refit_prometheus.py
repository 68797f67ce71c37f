"""A real Prometheus scrapes a running gateway: after feedback and a refit, PromQL returns the
calibrated ECE the API reports, and the refit/feedback counters moved."""

from __future__ import annotations

import shutil
import time
from typing import Any

import httpx
import pytest

from tests.conftest import start_gateway
from tests.processes import prometheus_query, running_prometheus, wait_for
from tests.refit.helpers import option_items
from tests.refit.test_refit_api import ask, label

pytestmark = pytest.mark.deploy


def _result(url: str, promql: str) -> list[dict[str, Any]]:
    return prometheus_query(url, promql)["result"]


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
    try:
        with (
            running_prometheus(binary, config, tmp_path) as prom,
            httpx.Client(base_url=gw.url, timeout=60.0) as api,
        ):
            items = option_items(600, 2.0, seed=71)
            cals = ask(api, double, items, "prom")
            label(api, cals, items, "label")
            outcome = api.post("/v1/calibration/models/mcq/refit", params={"task": "prom"})
            assert outcome.json()["status"] == "activated", outcome.text
            shown = api.get("/v1/calibration/models/mcq", params={"task": "prom"}).json()
            ece = shown["active"]["metrics"]["calibrated"]["ece"]
            version = shown["active"]["version"]

            series = wait_for(
                "calib_ece to be scraped",
                lambda: _result(prom, 'calib_ece{stage="calibrated", model="mcq", task="prom"}'),
            )
            assert float(series[0]["value"][1]) == pytest.approx(ece, rel=1e-12)
            version_series = _result(prom, 'calib_profile_version{model="mcq", task="prom"}')
            assert float(version_series[0]["value"][1]) == version
            refits = _result(prom, 'calib_refits_total{model="mcq", outcome="activated"}')
            assert float(refits[0]["value"][1]) >= 1
            feedback = _result(prom, 'sum(calib_feedback_total{model="mcq"})')
            assert float(feedback[0]["value"][1]) >= len(items)
            last = _result(prom, 'calib_last_refit_success_timestamp_seconds{task="prom"}')
            assert abs(float(last[0]["value"][1]) - time.time()) < 300
    finally:
        gw.server.stop()
