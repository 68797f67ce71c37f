"""What docker-compose.yml describes, run here as real processes (there is no Docker engine).

- `postgres`: a throwaway PostgreSQL cluster (the `pg_server` fixture of tests/pg.py),
  with the compose's role and password; the compose's CALIB_DB with its host rewritten to loopback.
- `gateway`, scaled to two replicas: each is the image's entrypoint (deploy/docker/entrypoint.sh,
  `calib serve`) with the image's ENV and the compose service's environment (.env.example values;
  CALIB_WORKERS=2 included, so each replica is a uvicorn master with two workers), hosts rewritten
  to loopback, its own data dir, and the compose's mounted calib.yaml. Both start at once against
  one empty database: the migrations serialise on PostgreSQL's advisory lock.
- `vllm`: the upstream double of tests/upstream_double.py (a real HTTP server on loopback).
- `prometheus`: the Debian binary with deploy/prometheus/prometheus.yml, its targets rewritten to
  the loopback addresses (gateway:8080 -> both replicas), 1 s intervals, and the real alerts.yml.

Every wait is bounded; every process started here is stopped here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml

from calibrators import Profile
from service.store import Store
from tests.deploy.deploy_files import (
    ENTRYPOINT,
    dockerfile_env,
    dockerfile_instructions,
    environment,
    exec_form,
    load_compose,
)
from tests.deploy.paths import PROMETHEUS_DIR, REPO
from tests.processes import free_port, prometheus_query, running_prometheus, wait_for
from tests.upstream_double import JSONReply, UpstreamDouble, chat_response

pytestmark = [pytest.mark.deploy, pytest.mark.postgres]

START_TIMEOUT_S = 120.0
WAIT_S = 60.0
GRACE_S = 30.0  # the compose gateway's stop_grace_period
OPTIONS = ["A", "B", "C", "D"]
GATEWAY_JOB = "mllm-calib-gateway"


def _wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    return wait_for(what, check, timeout)


def _stop(proc: subprocess.Popen[bytes], timeout: float = GRACE_S) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
        raise


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


# ----------------------------------------------------------------------------- the engine


def _steps(chosen_logprob: float) -> list[Any]:
    """One answer token " B" with the given logprob; the other options share the rest."""
    others = [chosen_logprob - 2.0 - i for i in range(3)]
    top = [(" B", chosen_logprob)] + [(f" {o}", lp) for o, lp in zip("ACD", others, strict=True)]
    return [(" B", chosen_logprob, top)]


@pytest.fixture(scope="module")
def engine() -> Iterator[UpstreamDouble]:
    double = UpstreamDouble().start()
    rng = random.Random(7)

    def reply(path: str, body: dict[str, Any]) -> Any:
        if path == "/v1/chat/completions":
            # Confident answers (0.85-0.99): overconfident for the 50 % labels below.
            chosen = -rng.uniform(0.01, 0.16)
            return JSONReply(chat_response(_steps(chosen), model=body.get("model", "m")))
        return None

    double.reply = reply
    yield double
    double.stop()


# ----------------------------------------------------------------------------- the store


@pytest.fixture(scope="module")
def compose_gateway() -> dict[str, Any]:
    return load_compose()["services"]["gateway"]


@pytest.fixture(scope="module")
def database(pg_server: str, compose_gateway: dict[str, Any]) -> str:
    """The compose's CALIB_DB, on loopback: same role and password, a fresh database."""
    import psycopg

    url = urlsplit(environment(compose_gateway)["CALIB_DB"])
    assert url.hostname == "postgres", url
    name = f"stack_{uuid.uuid4().hex[:10]}"
    admin = pg_server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", [url.username]
        ).fetchone()
        if not exists:
            conn.execute(f"CREATE ROLE \"{url.username}\" LOGIN PASSWORD '{url.password}'")
        conn.execute(f'CREATE DATABASE "{name}" OWNER "{url.username}"')
    port = urlsplit(pg_server).port
    netloc = f"{url.username}:{url.password}@127.0.0.1:{port}"
    return urlunsplit((url.scheme, netloc, f"/{name}", url.query, url.fragment))


# ----------------------------------------------------------------------------- the gateways


@dataclass
class Replica:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def _replica_env(
    compose_gateway: dict[str, Any], database: str, engine: UpstreamDouble, data_dir: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALIB_", "PROMETHEUS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the image's /opt/venv/bin
    image_env = {k: v for k, v in dockerfile_env("runtime").items() if k.startswith("CALIB_")}
    env |= image_env | environment(compose_gateway)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose_gateway.get("volumes", [])}
    engine_address = urlsplit(engine.base_url).netloc
    env |= {
        "CALIB_HOST": "127.0.0.1",  # 0.0.0.0 in the container
        "CALIB_PORT": str(free_port()),
        "CALIB_DATA_DIR": str(data_dir),
        "CALIB_CONFIG": str(REPO / mounts[env["CALIB_CONFIG"]]),
        "CALIB_UPSTREAM": env["CALIB_UPSTREAM"].replace("vllm:8000", engine_address),
        "CALIB_DB": database,
    }
    return env


@pytest.fixture(scope="module")
def replicas(
    compose_gateway: dict[str, Any],
    database: str,
    engine: UpstreamDouble,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Replica]]:
    (cmd,) = [i for i in dockerfile_instructions() if i.keyword == "CMD" and i.stage == "runtime"]
    started: list[Replica] = []
    try:
        for name in ("gateway-1", "gateway-2"):
            data_dir = tmp_path_factory.mktemp(name)
            env = _replica_env(compose_gateway, database, engine, data_dir)
            log = data_dir / "gateway.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    ["sh", str(ENTRYPOINT), *exec_form(cmd.args)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: the workers stop with it
                )
            url = f"http://127.0.0.1:{env['CALIB_PORT']}"
            started.append(Replica(name, url, proc, log))
        for replica in started:  # started together: both run the migrations at once

            def healthy(replica: Replica = replica) -> bool:
                assert replica.proc.poll() is None, f"{replica.name}: {_tail(replica.log)}"
                return httpx.get(f"{replica.url}/healthz", timeout=2).status_code == 200

            _wait_for(f"{replica.name} /healthz", healthy, START_TIMEOUT_S)
        yield started
    finally:
        for replica in started:
            _stop(replica.proc)


@pytest.fixture(scope="module")
def admin(compose_gateway: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {environment(compose_gateway)['CALIB_ADMIN_KEY']}"}


def _chat(replica: Replica, headers: dict[str, str], model: str) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Which option? A, B, C or D."}],
        "calibration": {"options": OPTIONS},
    }
    response = httpx.post(
        f"{replica.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["calibration"]


# ----------------------------------------------------------------------------- prometheus


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str,
    replicas: list[Replica],
    engine: UpstreamDouble,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    loopback = {
        "gateway:8080": [urlsplit(r.url).netloc for r in replicas],  # the gateway, scaled to 2
        "vllm:8000": [urlsplit(engine.base_url).netloc],
    }
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            static["targets"] = [new for old in static["targets"] for new in loopback[old]]
    config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
    config["global"]["evaluation_interval"] = "1s"
    for rule_file in config["rule_files"]:
        (workdir / rule_file).write_text((PROMETHEUS_DIR / rule_file).read_text())
    with running_prometheus(prometheus_binary, config, workdir, WAIT_S) as url:
        yield url


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    return prometheus_query(url, promql)["result"]


# ----------------------------------------------------------------------------- the checks


def test_both_replicas_are_ready(replicas: list[Replica]) -> None:
    for replica in replicas:
        response = _wait_for(
            f"{replica.name} /readyz",
            lambda r=replica: (
                (res := httpx.get(f"{r.url}/readyz", timeout=5)).status_code == 200 and res
            ),
        )
        assert response.json()["checks"] == {"store": "ok", "upstream": "ok"}


def test_both_replicas_serve_calibrated_answers(
    replicas: list[Replica], admin: dict[str, str]
) -> None:
    for replica in replicas:
        calibration = _chat(replica, admin, "stack-serve")
        assert calibration["answer"] == "B"
        assert 0.8 < calibration["confidence"] < 1


def test_feedback_posted_to_one_replica_is_read_through_the_other(
    replicas: list[Replica], admin: dict[str, str]
) -> None:
    first, second = replicas
    prediction = _chat(first, admin, "stack-feedback")["id"]
    # The prediction is written behind the response (0.1 s flush): allow for it.
    posted = _wait_for(
        "the prediction to reach the store",
        lambda: (
            (
                res := httpx.post(
                    f"{second.url}/v1/feedback",
                    json={"id": prediction, "correct": True},
                    headers=admin,
                    timeout=10,
                )
            ).status_code
            != 404
            and res
        ),
        timeout=10,
    )
    assert posted.status_code == 200, posted.text
    read = httpx.get(f"{first.url}/v1/feedback/{prediction}", headers=admin, timeout=10)
    assert read.status_code == 200, read.text
    assert read.json()["correct"] is True


def test_a_profile_written_to_the_store_is_served_by_both_replicas(
    replicas: list[Replica], admin: dict[str, str], database: str
) -> None:
    """As the refit CronJob (another process) would leave it: both replicas pick it up."""
    store = Store.open(database)
    try:
        saved = store.save_profile(
            Profile(
                model="stack-profile",
                task="default",
                mode="options",
                method="temperature",
                calibrator={"type": "temperature", "temperature": 3.0},
                threshold=0.2,
            ),
            activate=True,
            reason="stack test",
        )
    finally:
        store.close()
    for replica in replicas:
        calibration = _wait_for(
            f"{replica.name} to serve version {saved.version}",
            lambda r=replica: (
                (c := _chat(r, admin, "stack-profile"))["profile_version"] == saved.version and c
            ),
            timeout=15,
        )
        assert calibration["temperature"] == 3.0
        assert calibration["confidence"] < calibration["raw_confidence"]


def _has_refit_endpoint(replica: Replica) -> bool:
    paths = httpx.get(f"{replica.url}/openapi.json", timeout=10).json().get("paths", {})
    return any(path.endswith("/refit") for path in paths)


def test_one_refit_activates_a_profile_both_replicas_serve(
    replicas: list[Replica], admin: dict[str, str]
) -> None:
    first, second = replicas
    if not _has_refit_endpoint(first):
        pytest.skip("the gateway has no refit endpoint yet (POST /v1/calibration/.../refit)")
    model, rng = "stack-refit", random.Random(11)
    ids = [_chat(replicas[i % 2], admin, model)["id"] for i in range(200)]
    labels = [{"id": id_, "correct": rng.random() < 0.5} for id_ in ids]
    posted = _wait_for(
        "the predictions to reach the store",
        lambda: (
            (
                res := httpx.post(
                    f"{first.url}/v1/feedback", json=labels, headers=admin, timeout=30
                )
            ).status_code
            != 404
            and res
        ),
        timeout=15,
    )
    assert posted.status_code == 200, posted.text
    refit = httpx.post(
        f"{second.url}/v1/calibration/models/{model}/refit", headers=admin, timeout=120
    )
    assert refit.status_code == 200, refit.text
    outcome = refit.json()
    assert outcome["status"] == "activated", json.dumps(outcome, indent=1)
    for replica in replicas:
        calibration = _wait_for(
            f"{replica.name} to serve the refitted version",
            lambda r=replica: (
                (c := _chat(r, admin, model))["profile_version"] == outcome["active_version"] and c
            ),
            timeout=15,
        )
        # 50 % right at 85-99 % confidence: the refit cools the answers down.
        assert calibration["confidence"] < calibration["raw_confidence"]


def test_prometheus_scrapes_both_replicas(prometheus: str, replicas: list[Replica]) -> None:
    def both_up() -> list[dict[str, Any]]:
        result = _query(prometheus, f'up{{job="{GATEWAY_JOB}"}}')
        return result if len(result) == 2 and all(r["value"][1] == "1" for r in result) else []

    result = _wait_for("up == 1 for both gateway targets", both_up)
    instances = {r["metric"]["instance"] for r in result}
    assert instances == {urlsplit(r.url).netloc for r in replicas}
    served = _wait_for(
        "request counters of both replicas",
        lambda: (
            len(
                _query(
                    prometheus, f'sum by (instance) (calib_requests_total{{job="{GATEWAY_JOB}"}})'
                )
            )
            == 2
        ),
    )
    assert served


def test_the_alert_rules_load_next_to_the_compose_scrape_config(prometheus: str) -> None:
    def groups() -> list[dict[str, Any]]:
        found = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [rule for group in found for rule in group["rules"]]
        return found if rules and all(r["health"] != "unknown" for r in rules) else []

    rules = [rule for group in _wait_for("rule evaluation", groups) for rule in group["rules"]]
    assert all(rule["health"] == "ok" for rule in rules), [
        (rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"
    ]


def test_sigterm_stops_a_replica_gracefully_and_the_other_keeps_serving(
    replicas: list[Replica], admin: dict[str, str]
) -> None:
    """Last: SIGTERM (the image's STOPSIGNAL) ends a replica within the grace period, cleanly."""
    first, second = replicas
    calibration = _chat(second, admin, "stack-shutdown")
    assert _stop(second.proc) == 0, _tail(second.log)
    assert "Application shutdown complete" in _tail(second.log)
    # The answer it gave just before stopping was flushed: the other replica accepts its label.
    posted = httpx.post(
        f"{first.url}/v1/feedback",
        json={"id": calibration["id"], "correct": False},
        headers=admin,
        timeout=10,
    )
    assert posted.status_code == 200, posted.text
    assert _chat(first, admin, "stack-shutdown")["answer"] == "B"
