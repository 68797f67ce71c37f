"""Fixtures for refit tests: a gateway of our own (fresh SQLite file, scheduler off)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Gateway
from tests.refit.helpers import refit_client, start_refit_gateway
from tests.upstream_double import UpstreamDouble


@pytest.fixture(scope="module")
def refit_gateway(upstream_double: UpstreamDouble, tmp_path_factory) -> Iterator[Gateway]:
    gw = start_refit_gateway(upstream_double.base_url, tmp_path_factory, "refit")
    yield gw
    gw.server.stop()


@pytest.fixture
def api(refit_gateway: Gateway, double: UpstreamDouble) -> Iterator[httpx.Client]:
    with refit_client(refit_gateway) as c:
        yield c
