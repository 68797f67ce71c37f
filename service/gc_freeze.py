"""Keep the garbage collector off the objects the gateway built at startup.

Why: the gateway's heap after startup holds ~140,000 GC-tracked objects (FastAPI, pydantic,
SQLAlchemy, numpy, prometheus-client, our modules) that live as long as the process. CPython's
full (oldest-generation) collection walks every one of them; under load one ran every ~3,000
requests and took ~70 ms, which with the young collections was ~30 µs of CPU per request, 9 % of
the gateway's CPU (docs/performance.md §6). `gc.freeze()` moves everything alive at the end of
startup into the permanent generation, which collections skip; objects made later (every
request's) are collected exactly as before.

Frozen objects are never collected while frozen, so the app thaws them on shutdown
(`thaw_heap`): in a process that builds several apps (tests), one app's startup objects are
collectable again once it is gone.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_heap", "thaw_heap"]


def freeze_heap() -> None:
    """Collect what is already garbage, then freeze every object that is still alive."""
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    """Make the frozen objects collectable again (they join the oldest generation)."""
    gc.unfreeze()
