"""A gateway with real keys: the bootstrap admin key and client keys of two tenants.

The gateway is the real `create_app` on uvicorn (loopback), in front of the upstream double, on
its own SQLite file; keys are created in its store the way `calib keys create` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import Gateway, start_gateway
from tests.upstream_double import UpstreamDouble

ADMIN_KEY = "sk-test-bootstrap-admin-7f3c9e"


@dataclass
class Keys:
    admin: str  # the bootstrap admin key
    stored_admin: str  # an admin key from the store
    acme: str  # client key of tenant acme
    acme2: str  # a second client key of tenant acme
    globex: str  # client key of tenant globex


@dataclass
class SecureGateway:
    gw: Gateway
    keys: Keys

    @property
    def url(self) -> str:
        return self.gw.url

    @property
    def store(self):  # type: ignore[no-untyped-def]
        return self.gw.app.state.store

    def client(self, key: str | None, **kwargs: object) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)


def make_keys(store) -> Keys:  # type: ignore[no-untyped-def]
    stored_admin, _ = store.create_key("ops", "admin", tenant="default")
    acme, _ = store.create_key("acme-app", "client", tenant="acme")
    acme2, _ = store.create_key("acme-batch", "client", tenant="acme")
    globex, _ = store.create_key("globex-app", "client", tenant="globex")
    return Keys(ADMIN_KEY, stored_admin, acme, acme2, globex)


@pytest.fixture(scope="module")
def secure(upstream_double: UpstreamDouble, tmp_path_factory) -> Iterator[SecureGateway]:
    db = tmp_path_factory.mktemp("secure") / "calib.db"
    gw = start_gateway(
        upstream_double.base_url,
        db,
        admin_key=ADMIN_KEY,
        refit_enabled=False,
        refit_executor="thread",
        refit_min_labels=10,
        feedback_rate_per_s=1000.0,
        feedback_burst=5000,
    )
    try:
        yield SecureGateway(gw, make_keys(gw.app.state.store))
    finally:
        gw.server.stop()
