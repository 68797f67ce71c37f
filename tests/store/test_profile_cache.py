"""ProfileCache: fallbacks, TTL refresh (other replicas' activations), store outages."""

from __future__ import annotations

import asyncio
from pathlib import Path

from calibrators import Profile
from service.profiles import ProfileCache
from service.store import Store


def _profile(model: str = "gemma", task: str = "default", **fields) -> Profile:
    return Profile.from_dict({**Profile.identity(model, task).to_dict(), **fields})


async def test_identity_before_any_profile(store: Store) -> None:
    profile = await ProfileCache(store).get("gemma", "vqa")
    assert profile == Profile.identity("gemma", "vqa")


async def test_task_falls_back_to_the_models_default(store: Store) -> None:
    store.save_profile(_profile(threshold=0.4), activate=True, reason="refit")
    cache = ProfileCache(store)
    assert (await cache.get("gemma", "ocr")).threshold == 0.4
    store.save_profile(_profile(task="ocr", threshold=0.2), activate=True, reason="refit")
    cache.invalidate("gemma")
    assert (await cache.get("gemma", "ocr")).threshold == 0.2
    assert (await cache.get("gemma")).threshold == 0.4


async def test_another_replicas_activation_is_seen_after_the_ttl(store_url: str) -> None:
    mine, other_replica = Store.open(store_url), Store.open(store_url)
    cache = ProfileCache(mine, ttl_s=0.2)
    assert (await cache.get("gemma")).version == 0
    other_replica.save_profile(_profile(threshold=0.3), activate=True, reason="refit")
    assert (await cache.get("gemma")).version == 0  # cached
    await asyncio.sleep(0.25)
    assert (await cache.get("gemma")).version == 1
    mine.close()
    other_replica.close()


async def test_concurrent_misses_share_one_read(store: Store) -> None:
    store.save_profile(_profile(threshold=0.4), activate=True, reason="refit")
    cache = ProfileCache(store)
    profiles = await asyncio.gather(*(cache.get("gemma") for _ in range(50)))
    assert all(p is profiles[0] for p in profiles)


async def test_store_outage_keeps_the_last_known_profile(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    store = Store.open(f"sqlite:///{path}")
    store.save_profile(_profile(threshold=0.4), activate=True, reason="refit")
    cache = ProfileCache(store, ttl_s=0.0)
    assert (await cache.get("gemma")).threshold == 0.4
    store.close()
    for file in tmp_path.iterdir():
        file.unlink()
    path.mkdir()  # the database is gone
    assert (await cache.get("gemma")).threshold == 0.4
    assert (await cache.get("qwen")) == Profile.identity("qwen", "default")
