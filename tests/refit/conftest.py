"""Fixtures for refit tests: a gateway of our own (fresh SQLite file, scheduler off)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Gateway, start_gateway
from tests.upstream_double import UpstreamDouble


@pytest.fixture(scope="module")
def refit_gateway(upstream_double: UpstreamDouble, tmp_path_factory) -> Iterator[Gateway]:
    db = tmp_path_factory.mktemp("refit") / "calib.db"
    gw = start_gateway(
        upstream_double.base_url,
        db,
        refit_enabled=False,
        refit_executor="thread",
        refit_min_labels=50,
    )
    yield gw
    gw.server.stop()


@pytest.fixture
def api(refit_gateway: Gateway, double: UpstreamDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=refit_gateway.url, timeout=60.0) as c:
        yield c
