"""A real Prometheus (the Debian binary) scrapes a real HTTP server serving our /metrics route.

The server is uvicorn on loopback running `service.routes.metrics.router` with a calibration
source whose active profile has a known calibrated ECE; Prometheus runs on a free loopback port
with a temporary config (1 s scrape and rule evaluation, our alerts.yml) and a temporary TSDB.
Every wait is bounded; the process is stopped at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from calibrators import Profile
from service import metrics
from service.calibration_health import CalibrationState
from service.routes.metrics import router
from tests.deploy.paths import DASHBOARD, PROMETHEUS_DIR
from tests.processes import prometheus_query, running_prometheus, wait_for
from tests.upstream_double import ServerThread

pytestmark = pytest.mark.deploy

KNOWN_ECE = 0.0421
START_TIMEOUT_S = 60.0
QUERY_TIMEOUT_S = 60.0


def _profile() -> Profile:
    return Profile(
        model="qwen-vl",
        task="vqa",
        version=7,
        method="temperature",
        calibrator={"type": "temperature", "temperature": 1.6},
        threshold=0.5,
        metrics={"raw": {"ece": 0.19}, "calibrated": {"ece": KNOWN_ECE}, "accuracy": 0.71},
        n_labels=900,
    )


@pytest.fixture(scope="module")
def gateway_metrics() -> Iterator[ServerThread]:
    """A real HTTP server on loopback serving our /metrics route."""
    app = FastAPI()
    app.include_router(router)
    state = CalibrationState(
        "qwen-vl", "vqa", profile=_profile(), last_refit_success_at=time.time() - 60
    )
    app.state.calibration_source = lambda: [state]
    metrics.observe_request("qwen-vl", "/v1/chat/completions", 200, 0.4, 0.35)
    metrics.observe_confidence("qwen-vl", "vqa", 0.95, 0.7)
    server = ServerThread(app).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, gateway_metrics: ServerThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("prometheus")
    (workdir / "alerts.yml").write_text((PROMETHEUS_DIR / "alerts.yml").read_text())
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": "mllm-calib-gateway",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{gateway_metrics.port}"]}],
            }
        ],
    }
    with running_prometheus(prometheus_binary, config, workdir, START_TIMEOUT_S) as url:
        yield url


def test_promql_returns_the_calibrated_ece_of_the_active_profile(prometheus: str) -> None:
    result = wait_for(
        "calib_ece to be scraped",
        lambda: prometheus_query(prometheus, 'calib_ece{stage="calibrated"}')["result"],
        QUERY_TIMEOUT_S,
    )
    (series,) = result
    assert series["metric"]["model"] == "qwen-vl"
    assert series["metric"]["task"] == "vqa"
    assert series["metric"]["job"] == "mllm-calib-gateway"
    assert float(series["value"][1]) == pytest.approx(KNOWN_ECE)


def test_the_scrape_is_healthy(prometheus: str) -> None:
    def active_targets() -> list[dict[str, Any]]:
        body = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()
        targets = body["data"]["activeTargets"]
        return targets if targets and targets[0]["health"] != "unknown" else []

    (target,) = wait_for("the first scrape", active_targets, QUERY_TIMEOUT_S)
    assert target["health"] == "up", target["lastError"]


def test_the_alert_rules_load_and_evaluate(prometheus: str) -> None:
    def groups() -> list[dict[str, Any]]:
        body = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()
        found = body["data"]["groups"]
        rules = [rule for group in found for rule in group["rules"]]
        return found if rules and all(r["health"] != "unknown" for r in rules) else []

    found = wait_for("rule evaluation", groups, QUERY_TIMEOUT_S)
    rules = [rule for group in found for rule in group["rules"]]
    assert len(rules) == len(
        [
            r
            for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
            for r in g["rules"]
        ]
    )
    assert all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ]


def test_every_dashboard_query_is_valid_promql(prometheus: str) -> None:
    """Grafana variables substituted, each panel query is accepted by the real query engine."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    for expr in exprs:
        promql = (
            expr.replace("$__rate_interval", "1m")
            .replace('"$model"', '".*"')
            .replace('"$task"', '".*"')
        )
        prometheus_query(
            prometheus, promql
        )  # asserts status == success (a parse error is status=error)
