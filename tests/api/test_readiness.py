"""`/readyz?exclude=upstream`: the gateway's own readiness, what the Kubernetes readinessProbe
uses (deploy/k8s/base/gateway-deployment.yaml). With the engine down the pod stays in its
Service and answers 502 in OpenAI's shape; with the store down it is taken out.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import start_gateway

BODY = {"model": "mcq", "messages": [{"role": "user", "content": "?"}]}


def _openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_with_the_upstream_down_only_the_full_readiness_fails(tmp_path) -> None:
    gw = start_gateway(f"http://127.0.0.1:{_dead_port()}/v1", tmp_path / "calib.db")
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            full = c.get("/readyz")
            assert _openai_error(full, 503)["code"] == "not_ready"
            assert full.json()["checks"]["upstream"].startswith("error")
            own = c.get("/readyz", params={"exclude": "upstream"})
            assert own.status_code == 200, own.text
            assert own.json() == {"status": "ready", "checks": {"store": "ok"}}
            # ... and the ready pod answers the client in OpenAI's shape.
            error = _openai_error(c.post("/v1/chat/completions", json=BODY), 502)
            assert error["type"]
    finally:
        gw.server.stop()


@pytest.mark.postgres
def test_the_gateways_own_readiness_fails_when_the_store_does(upstream_double, pg_url, tmp_path):
    import psycopg

    name = urlsplit(pg_url).path.lstrip("/")
    admin = pg_url.replace("postgresql+psycopg", "postgresql").rsplit("/", 1)[0] + "/postgres"
    gw = start_gateway(upstream_double.base_url, tmp_path / "unused.db", db=pg_url)
    try:
        with (
            httpx.Client(base_url=gw.url, timeout=10) as c,
            psycopg.connect(admin, autocommit=True) as pg,
        ):
            assert c.get("/readyz", params={"exclude": "upstream"}).status_code == 200
            # The database goes away: no new connections, the open ones are cut.
            pg.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
            )
            try:
                own = c.get("/readyz", params={"exclude": "upstream"})
            finally:
                pg.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            assert _openai_error(own, 503)["code"] == "not_ready"
            assert set(own.json()["checks"]) == {"store"}
            assert own.json()["checks"]["store"].startswith("error")
            assert c.get("/readyz", params={"exclude": "upstream"}).status_code == 200
    finally:
        gw.server.stop()


def test_an_unknown_check_name_is_a_clear_400(client) -> None:
    response = client.get("/readyz", params={"exclude": ["upstream", "engine"]})
    error = _openai_error(response, 400)
    assert error["param"] == "exclude"
    assert "'engine'" in error["message"] and "'upstream'" in error["message"]


def test_excluding_nothing_checks_both(client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"store": "ok", "upstream": "ok"}
