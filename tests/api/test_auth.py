"""API-key auth: 401/403 in OpenAI's shape, admin key, open mode and its start-up guard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI

from service.auth import (
    KeyCache,
    Principal,
    authenticate,
    check_open_mode,
    is_loopback,
    require_admin,
)
from service.errors import install_error_handlers
from service.settings import load_settings
from service.store import Store

ADMIN_KEY = "bootstrap-admin-key-0123456789"


def _app(store: Store, **settings: object) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/whoami")
    async def whoami(principal: Principal = Depends(authenticate)) -> dict[str, object]:
        return {"name": principal.name, "tenant": principal.tenant, "role": principal.role}

    @app.get("/admin")
    async def admin(principal: Principal = Depends(require_admin)) -> dict[str, object]:
        return {"name": principal.name}

    app.state.store = store
    app.state.settings = load_settings(**settings)
    return app


@pytest.fixture
def store(tmp_path: Path) -> Store:
    opened = Store.open(f"sqlite:///{tmp_path / 'calib.db'}")
    yield opened
    opened.close()


@pytest.fixture
async def http(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = _app(store, admin_key=ADMIN_KEY)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        client.app = app  # type: ignore[attr-defined]
        yield client


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _assert_openai_error(response: httpx.Response, status: int, type_: str) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_


async def test_missing_key_is_401(http: httpx.AsyncClient) -> None:
    response = await http.get("/whoami")
    _assert_openai_error(response, 401, "authentication_error")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer sk-calib-nope", "Bearer", "Basic abc", "sk-calib-x"])
async def test_unknown_or_malformed_key_is_401(http: httpx.AsyncClient, header: str) -> None:
    response = await http.get("/whoami", headers={"Authorization": header})
    _assert_openai_error(response, 401, "authentication_error")


async def test_client_key_names_its_tenant(http: httpx.AsyncClient, store: Store) -> None:
    key, _ = store.create_key("app", "client", tenant="acme")
    response = await http.get("/whoami", headers=_bearer(key))
    assert response.json() == {"name": "app", "tenant": "acme", "role": "client"}


async def test_client_key_on_an_admin_route_is_403(http: httpx.AsyncClient, store: Store):
    key, _ = store.create_key("app", "client")
    _assert_openai_error(await http.get("/admin", headers=_bearer(key)), 403, "permission_error")


async def test_stored_admin_key_passes_admin_routes(http: httpx.AsyncClient, store: Store):
    key, _ = store.create_key("ops", "admin")
    response = await http.get("/admin", headers=_bearer(key))
    assert response.status_code == 200
    assert response.json() == {"name": "ops"}


async def test_bootstrap_admin_key_works(http: httpx.AsyncClient) -> None:
    response = await http.get("/admin", headers=_bearer(ADMIN_KEY))
    assert response.status_code == 200
    wrong = ADMIN_KEY[:-1] + "X"
    _assert_openai_error(
        await http.get("/admin", headers=_bearer(wrong)), 401, "authentication_error"
    )


async def test_revoked_key_is_refused_once_the_cache_expires(http: httpx.AsyncClient, store):
    http.app.state.key_cache = KeyCache(ttl_s=0.0)  # type: ignore[attr-defined]
    key, _ = store.create_key("app", "client")
    assert (await http.get("/whoami", headers=_bearer(key))).status_code == 200
    store.revoke_key("app")
    _assert_openai_error(
        await http.get("/whoami", headers=_bearer(key)), 401, "authentication_error"
    )


async def test_lookups_are_cached(http: httpx.AsyncClient, store: Store) -> None:
    key, _ = store.create_key("app", "client")
    assert (await http.get("/whoami", headers=_bearer(key))).status_code == 200
    store.revoke_key("app")  # within the TTL the cached record still answers
    assert (await http.get("/whoami", headers=_bearer(key))).status_code == 200


async def test_open_mode_without_any_key(store: Store) -> None:
    app = _app(store)  # no admin key, no stored key
    app.state.key_cache = KeyCache(ttl_s=0.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.get("/admin")
        assert response.status_code == 200
        assert response.json() == {"name": "anonymous"}
        store.create_key("first", "client")  # the first key ends open mode
        _assert_openai_error(await client.get("/whoami"), 401, "authentication_error")


async def test_store_down_during_auth_is_503(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    store = Store.open(f"sqlite:///{path}")
    store.create_key("app", "client")
    app = _app(store)
    store.close()
    for file in tmp_path.iterdir():
        file.unlink()
    path.mkdir()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        response = await client.get("/whoami", headers=_bearer("sk-calib-whatever"))
    _assert_openai_error(response, 503, "service_unavailable_error")
    assert "retry-after" in response.headers


# ------------------------------------------------------------------ start-up guard


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_open_mode_on_loopback_warns(store: Store, host: str) -> None:
    warning = check_open_mode(load_settings(host=host), store)
    assert warning is not None and "OPEN" in warning


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "gateway.example.com"])
def test_public_bind_without_keys_refuses_to_start(store: Store, host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(RuntimeError, match="--insecure"):
        check_open_mode(load_settings(host=host), store)


def test_insecure_allows_a_public_bind_with_a_warning(store: Store) -> None:
    warning = check_open_mode(load_settings(host="0.0.0.0", insecure=True), store)
    assert warning is not None and "insecure" in warning


def test_keys_or_an_admin_key_close_open_mode(store: Store) -> None:
    assert check_open_mode(load_settings(host="0.0.0.0", admin_key=ADMIN_KEY), store) is None
    store.create_key("ops", "admin")
    assert check_open_mode(load_settings(host="0.0.0.0"), store) is None
