"""Shared fixtures: a controllable upstream double and the real gateway served by uvicorn.

Both are real HTTP servers on loopback ports, started once per test session. Each test gets the
double reset (`double` fixture); the gateway is configured with a few models that exercise the
per-model settings (see `GATEWAY_MODELS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.pg import pg_server, pg_url  # noqa: F401  (fixtures: a throwaway PostgreSQL)
from tests.upstream_double import ServerThread, UpstreamDouble

# Per-model configuration of the test gateway (docs/configuration.md explains each key).
GATEWAY_MODELS = {
    "mcq": {"options": ["A", "B", "C", "D"]},
    "mcq-idk": {"options": ["A", "B", "C", "D", "E"], "idk_option": "E"},
    "mcq-replace": {
        "options": ["A", "B", "C", "D"],
        "abstain": "replace",
        "idk_message": "I don't know.",
    },
    "sp-prepend": {"system_prompt": "Answer with one word.", "system_prompt_policy": "prepend"},
    "sp-replace": {"system_prompt": "Answer with one word.", "system_prompt_policy": "replace"},
    "sp-off": {"system_prompt": "Answer with one word.", "system_prompt_policy": "off"},
    "aliased": {"served_name": "test-model"},
    "k5": {"options": ["A", "B", "C", "D"], "top_logprobs": 5},
    "cities-likelihood": {
        "options": ["New York", "New Delhi", "New Orleans"],
        "scoring": "likelihood",
    },
}

# Long enough for a loaded 2-core CI machine, shorter than the doubles' 3 s stalls.
UPSTREAM_TIMEOUT_S = 2.5
MAX_BODY_BYTES = 1024 * 1024


@dataclass
class Gateway:
    """A running gateway: `url` is its root, `base_url` its OpenAI base (`/v1`)."""

    url: str
    app: object
    server: ServerThread

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def start_gateway(upstream: str, db_path: Path, **overrides: object) -> Gateway:
    """Start our app (the real `create_app`) with uvicorn on a free loopback port."""
    from service.app import create_app
    from service.settings import load_settings

    values: dict[str, object] = {
        "upstream": upstream,
        "db": f"sqlite:///{db_path}",
        "data_dir": db_path.parent,
        "upstream_timeout_s": UPSTREAM_TIMEOUT_S,
        "upstream_connect_timeout_s": 1.0,
        "max_body_bytes": MAX_BODY_BYTES,
        "models": GATEWAY_MODELS,
        # The model list is fetched once at start-up (before the gateway serves); no background
        # refresh during a test, whose `double.requests` would otherwise catch a stray
        # `GET /v1/models`. Tests of the refresh pass a short interval.
        "upstream_models_refresh_s": 3600.0,
    }
    settings = load_settings(**{**values, **overrides})
    app = create_app(settings)
    server = ServerThread(app).start()
    return Gateway(server.url, app, server)


@pytest.fixture(scope="session")
def upstream_double() -> Iterator[UpstreamDouble]:
    double = UpstreamDouble().start()
    yield double
    double.stop()


@pytest.fixture
def double(upstream_double: UpstreamDouble) -> Iterator[UpstreamDouble]:
    """The upstream double, reset for this test."""
    upstream_double.reset()
    yield upstream_double
    upstream_double.reset()


@pytest.fixture(scope="session")
def gateway(upstream_double: UpstreamDouble, tmp_path_factory) -> Iterator[Gateway]:
    gw = start_gateway(upstream_double.base_url, tmp_path_factory.mktemp("gw") / "calib.db")
    yield gw
    gw.server.stop()


@pytest.fixture
def client(gateway: Gateway, double: UpstreamDouble) -> Iterator[httpx.Client]:
    """An httpx client for the gateway (the double is reset for the test)."""
    with httpx.Client(base_url=gateway.url, timeout=10.0) as c:
        yield c
