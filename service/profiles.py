"""`ProfileCache`: the active calibration profile per (model, task), read-through with a TTL.

Every request needs its model's profile; reading the store each time would put the database on
the hot path. The cache refreshes an entry at most every `ttl_s`, so an activation made by
another replica (or `calib refit`) is picked up within seconds, and concurrent requests for an
expired entry share one store read. If the store is unavailable the last known profile is kept
(serving must not depend on the database); with nothing known yet, the identity profile is
served (T = 1, no threshold: `method: "none"`) until the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from service.store import Store, StoreError

if TYPE_CHECKING:  # calibrators (numpy) is imported on first use, not with the CLI
    from calibrators import Profile

logger = logging.getLogger(__name__)

DEFAULT_TASK = "default"


def _identity(model: str, task: str) -> Profile:
    from calibrators import Profile

    return Profile.identity(model, task)


class ProfileCache:
    """Active profiles by (model, task), falling back to the model's default task, then identity."""

    def __init__(self, store: Store, ttl_s: float = 2.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[float, Profile]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[Profile]] = {}

    async def get(self, model: str, task: str = DEFAULT_TASK) -> Profile:
        """The profile to calibrate (model, task) with right now."""
        key = (model, task or DEFAULT_TASK)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[Profile] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            profile = await self._load(key, stale=entry[1] if entry else None)
            self._entries[key] = (time.monotonic() + self.ttl_s, profile)
            future.set_result(profile)
            return profile
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters get it via await
            raise
        finally:
            del self._loading[key]

    def invalidate(self, model: str | None = None) -> None:
        """Forget cached profiles (of `model`, or all), e.g. right after an activation."""
        if model is None:
            self._entries.clear()
        else:
            for key in [key for key in self._entries if key[0] == model]:
                del self._entries[key]

    async def _load(self, key: tuple[str, str], stale: Profile | None) -> Profile:
        model, task = key
        try:
            return await asyncio.to_thread(self._lookup, model, task)
        except StoreError as error:
            if stale is not None:
                logger.warning("profile cache: store unavailable (%s); keeping %s/%s", error, *key)
                return stale
            logger.warning("profile cache: store unavailable (%s); identity for %s/%s", error, *key)
            return _identity(model, task)

    def _lookup(self, model: str, task: str) -> Profile:
        profile = self.store.active_profile(model, task)
        if profile is None and task != DEFAULT_TASK:
            profile = self.store.active_profile(model, DEFAULT_TASK)
        if profile is None:
            profile = _identity(model, task)
        return profile
