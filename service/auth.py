"""API-key authentication: `Authorization: Bearer <key>` → `Principal` (tenant and role).

Keys are created with `calib keys create` and stored hashed (see `service.store`). The bootstrap
admin key `CALIB_ADMIN_KEY` is compared in constant time and never stored. Lookups are cached
for a few seconds (hash → record), so a request pays microseconds for auth; the price is that a
revoked key keeps working for up to `KEY_CACHE_TTL_S`.

**Open mode**: with no admin key configured and no key in the store, every request acts as an
anonymous admin of tenant `default`. `check_open_mode` (called at start-up) allows that only on
a loopback address, or anywhere with `--insecure`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, Request

from service.errors import APIError
from service.services import per_app
from service.settings import Settings
from service.store import KeyRecord, Store, StoreError

KEY_CACHE_TTL_S = 5.0
_KEY_CACHE_MAX = 10_000
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    """Who is calling: `key_id` is None for the bootstrap admin key and in open mode."""

    key_id: str | None
    name: str
    tenant: str
    role: Literal["client", "admin"]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


ANONYMOUS = Principal(None, "anonymous", DEFAULT_TENANT, "admin")
BOOTSTRAP_ADMIN = Principal(None, "admin", DEFAULT_TENANT, "admin")


class KeyCache:
    """Short-lived cache of key lookups (including misses) and of "are there any keys"."""

    def __init__(self, ttl_s: float = KEY_CACHE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._keys: dict[str, tuple[float, KeyRecord | None]] = {}
        self._has_keys: tuple[float, bool] | None = None

    async def find(self, store: Store, plaintext: str) -> KeyRecord | None:
        digest = hashlib.sha256(plaintext.encode("utf-8")).hexdigest()
        now = time.monotonic()
        hit = self._keys.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await asyncio.to_thread(store.find_key, plaintext)
        if len(self._keys) >= _KEY_CACHE_MAX:
            self._keys.clear()
        self._keys[digest] = (now + self.ttl_s, record)
        return record

    async def has_keys(self, store: Store) -> bool:
        now = time.monotonic()
        if self._has_keys is not None and self._has_keys[0] > now:
            return self._has_keys[1]
        has = await asyncio.to_thread(store.count_keys) > 0
        self._has_keys = (now + self.ttl_s, has)
        return has

    def clear(self) -> None:
        self._keys.clear()
        self._has_keys = None


def key_cache(request: Request) -> KeyCache:
    """The app's key cache, made on first use on `app.state` (see `service.services.per_app`)."""
    return per_app(request.app, "key_cache", KeyCache)


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Malformed Authorization header; expected 'Bearer <key>'.")
    return token.strip()


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the caller's `Principal`, or 401 in OpenAI's error shape."""
    settings: Settings = request.app.state.settings
    store: Store = request.app.state.store
    cache = key_cache(request)
    token = _bearer(request)
    admin_key = settings.admin_key
    if (
        token is not None
        and admin_key
        and hmac.compare_digest(token.encode("utf-8"), admin_key.encode("utf-8"))
    ):
        return BOOTSTRAP_ADMIN
    try:
        if not admin_key and not await cache.has_keys(store):
            return ANONYMOUS
        if token is None:
            raise _unauthorized(
                "Missing API key: send 'Authorization: Bearer <key>' "
                "(create keys with `calib keys create`)."
            )
        record = await cache.find(store, token)
    except StoreError as error:
        raise APIError(
            503,
            f"Cannot verify the API key: the store is unavailable ({error}).",
            headers={"Retry-After": "1"},
        ) from None
    if record is None:
        raise _unauthorized("Invalid or revoked API key.")
    return Principal(record.id, record.name, record.tenant, record.role)


async def require_admin(principal: Principal = Depends(authenticate)) -> Principal:
    """FastAPI dependency: like `authenticate`, but 403 unless the caller is an admin."""
    if not principal.is_admin:
        raise APIError(403, "This operation needs an admin API key.", code="admin_required")
    return principal


def is_loopback(host: str) -> bool:
    """Whether binding `host` exposes the server to this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_open_mode(settings: Settings, store: Store) -> str | None:
    """Start-up check. None when keys protect the server; a warning to log loudly when it
    runs open (loopback, or `--insecure`); `RuntimeError` for a public bind without keys."""
    if settings.admin_key or store.count_keys() > 0:
        return None
    if is_loopback(settings.host):
        return (
            f"WARNING: no API keys configured: the gateway is OPEN (every request is an "
            f"anonymous admin). Acceptable only because it listens on loopback "
            f"({settings.host}). Create a key with `calib keys create --name NAME --role admin` "
            f"or set CALIB_ADMIN_KEY."
        )
    if settings.insecure:
        return (
            f"WARNING: no API keys configured and --insecure given: the gateway is OPEN to "
            f"anyone who can reach {settings.host}:{settings.port}. Every request is an "
            f"anonymous admin. Do not do this outside a trusted network."
        )
    raise RuntimeError(
        f"Refusing to serve {settings.host} without API keys: create one with "
        f"`calib keys create --name NAME --role admin`, set CALIB_ADMIN_KEY, bind 127.0.0.1, "
        f"or pass --insecure."
    )
