"""Refits run by `calib refit` (a separate process, like a Kubernetes CronJob) show on the
gateway's `/metrics`, and `CalibrationRefitFailing` fires on a failed one in a real Prometheus
that scrapes the gateway and evaluates deploy/prometheus/alerts.yml."""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from service.refit import RefitRunner
from service.settings import load_settings
from service.store import Store
from service.store import schema as store_schema
from tests.conftest import Gateway, start_gateway
from tests.processes import prometheus_query, running_prometheus, wait_for
from tests.refit.helpers import insert_labeled_options

CALIB = Path(sys.executable).with_name("calib")
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def _database(path: Path) -> str:
    """A store with labels for two tasks of `mcq`: `cron` fits; `broken` has stored features
    that cannot be read (as left by a faulty writer), so its refit fails with an error."""
    url = f"sqlite:///{path}"
    store = Store.open(url)
    try:
        insert_labeled_options(store, "mcq", "cron", 600, true_t=1.8, seed=61)
        insert_labeled_options(store, "mcq", "broken", 100, seed=62)
        predictions = store_schema.predictions
        with store.engine.begin() as conn:
            conn.execute(
                sa.update(predictions)
                .where(predictions.c.task == "broken")
                .values(
                    features={"option_logprobs": ["not a number"] * 4, "answer_index": 0},
                    option_logprobs=None,  # the hot keys live in the JSON only
                    answer_index=None,
                )
            )
    finally:
        store.close()
    return url


def _calib_refit(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CALIB), "refit", "--db", url],
        capture_output=True,
        text=True,
        timeout=180,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def _samples(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{gw.url}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("calib_refit") or "refit" in s.name
    }


def _key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


@pytest.fixture
def gateway_on(upstream_double, tmp_path) -> Iterator[tuple[Gateway, str]]:
    url = _database(tmp_path / "calib.db")
    gw = start_gateway(upstream_double.base_url, tmp_path / "calib.db", refit_enabled=False)
    gw.app.state.metrics_cache_seconds = 0.0  # read the store at every scrape
    yield gw, url
    gw.server.stop()


def test_a_cli_refit_shows_on_the_gateways_metrics(gateway_on) -> None:
    gw, url = gateway_on
    before = _samples(gw)
    assert not any(name == "calib_refits_total" for name, _ in before)

    run = _calib_refit(url)
    assert run.returncode == 1, run.stdout + run.stderr  # one pair failed
    assert "activated" in run.stdout and "failed" in run.stdout

    got = _samples(gw)
    assert got[_key("calib_refits_total", model="mcq", outcome="activated")] == 1
    assert got[_key("calib_refits_total", model="mcq", outcome="failed")] == 1
    assert got[_key("calib_refits_total", model="mcq", outcome="rejected")] == 0
    assert got[_key("calib_refit_failures_total", model="mcq")] == 1
    assert got[_key("calib_refit_duration_seconds_count", model="mcq")] == 2
    failed_at = got[_key("calib_last_refit_failure_timestamp_seconds", model="mcq", task="broken")]
    assert abs(failed_at - time.time()) < 300
    assert _key("calib_last_refit_failure_timestamp_seconds", model="mcq", task="cron") not in got
    success = got[_key("calib_last_refit_success_timestamp_seconds", model="mcq", task="cron")]
    assert abs(success - time.time()) < 300

    # A second run: the failing pair fails again, the counters go on from the store's totals.
    assert _calib_refit(url).returncode == 1
    again = _samples(gw)
    assert again[_key("calib_refit_failures_total", model="mcq")] == 2


@pytest.mark.deploy
def test_the_refit_failing_alert_fires_on_a_cli_refit_failure(gateway_on, tmp_path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("`prometheus` not installed (apt-get install prometheus)")
    gw, url = gateway_on
    rules = tmp_path / "alerts.yml"
    shutil.copy(ALERTS, rules)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": "mllm-calib-gateway",
                "static_configs": [{"targets": [f"127.0.0.1:{gw.server.port}"]}],
            }
        ],
    }
    promdir = tmp_path / "prom"
    promdir.mkdir()
    with running_prometheus(binary, config, promdir) as prom:

        def firing() -> list:
            query = 'ALERTS{alertname="CalibrationRefitFailing", alertstate="firing"}'
            return prometheus_query(prom, query)["result"]

        def scraped() -> list:
            return prometheus_query(prom, "calib_calibration_source_up == 1")["result"]

        wait_for("the gateway to be scraped", scraped)
        assert firing() == []
        assert _calib_refit(url).returncode == 1
        alerts = wait_for("CalibrationRefitFailing to fire", firing, timeout=60)
        assert [a["metric"]["model"] for a in alerts] == ["mcq"]
        assert alerts[0]["metric"]["severity"] == "warning"


async def test_a_refit_whose_worker_dies_is_recorded_and_counted_as_failed(tmp_path) -> None:
    """The gateway's refit worker process is killed mid-refit: the audit log says failed (not
    `running` forever) and the failure is counted in the store, so every replica's
    `/metrics` shows it."""
    url = f"sqlite:///{tmp_path / 'calib.db'}"
    store = Store.open(url)
    insert_labeled_options(store, "mcq", "big", 200_000, seed=63)
    settings = load_settings(db=url, data_dir=tmp_path, refit_executor="process")
    runner = RefitRunner(store, settings)
    try:
        before = set(multiprocessing.active_children())
        attempt = asyncio.create_task(runner.run("mcq", "big"))

        async def running() -> bool:
            events = await asyncio.to_thread(store.profile_events, "mcq", "big")
            return any(e.status == "running" for e in events)

        for _ in range(600):
            if await running():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the worker never started the refit")
        workers = set(multiprocessing.active_children()) - before
        assert workers, "no worker process"
        for worker in workers:
            worker.kill()
        outcome = await attempt
    finally:
        await runner.aclose()
    try:
        assert outcome.status == "failed", outcome
        event = store.get_event(outcome.id)
        assert event is not None and event.status == "failed"
        assert event.finished_at is not None
        assert "BrokenProcessPool" in (event.reason or "")
        tallies = [t for t in store.refit_tallies() if t.model == "mcq"]
        assert [(t.task, t.status, t.count) for t in tallies] == [("big", "failed", 1)]
    finally:
        store.close()
