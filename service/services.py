"""The app's shared services, built once in the lifespan (service/app.py).

One typed container instead of loose `app.state` attributes: a route or the request path reads
`request.app.state.services` and gets every collaborator with its type. Nothing here is filled
lazily; what a service needs at request time it gets from this object, including the per-app
caches (feedback rate buckets, prompt-optimization tasks, the calibration collector).

`per_app` is the one place that reads a per-app cache: from `services`, or, for an app built
without the lifespan (a bare `FastAPI()` with one router, as some tests build it) and for the API
key cache (kept out of `Services`, see `per_app`), created on first use and kept on `app.state`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.datastructures import State

if TYPE_CHECKING:
    from service.calibration_health import CalibrationCollector
    from service.guarantee_monitor import GuaranteeCollector
    from service.known_models import KnownModels
    from service.profiles import ProfileCache
    from service.proxy import Upstream
    from service.rate_limit import TokenBuckets
    from service.refit import RefitRunner, RefitScheduler
    from service.settings import Settings
    from service.shift import ShiftMonitor
    from service.store import PredictionWriter, Store

__all__ = ["AppState", "Services", "per_app"]

T = TypeVar("T")


@dataclass(slots=True)
class Services:
    """Everything a request may use, opened in the lifespan and closed on shutdown."""

    settings: Settings
    store: Store
    writer: PredictionWriter  # write-behind predictions
    profiles: ProfileCache  # active profile per (model, task)
    upstream: Upstream  # the pooled upstream client
    known_models: KnownModels  # the `model` label values on /metrics
    refit_runner: RefitRunner
    refit_scheduler: RefitScheduler | None  # None: refit_enabled is off
    calibration_source: Callable[[], Any]  # calibration health for /metrics
    refit_source: Callable[[], Any]  # refit tallies for /metrics
    # --- per-app caches (the API key cache stays on `app.state`: see `per_app`) ---
    feedback_buckets: TokenBuckets | None  # None: feedback_rate_per_s is 0
    prompt_opt_tasks: set[asyncio.Task[Any]]  # running prompt-optimization jobs
    calibration_collector: CalibrationCollector  # calibration health on /metrics
    guarantee_collector: GuaranteeCollector  # realized guarantees on /metrics
    shift: ShiftMonitor | None = None  # the input-shift gauge (None: shift_enabled is off)

    @property
    def metrics_cache_seconds(self) -> float:
        """How long a scrape reuses the calibration state (settable at run time; the guarantee
        monitor's cache follows it)."""
        return self.calibration_collector.cache_seconds

    @metrics_cache_seconds.setter
    def metrics_cache_seconds(self, seconds: float) -> None:
        self.calibration_collector.cache_seconds = seconds
        self.guarantee_collector.cache_seconds = seconds


_SERVICE_NAMES = frozenset(f.name for f in fields(Services))
# Names a write on `app.state` passes on to `services` once it is built.
_SETTABLE = frozenset({"metrics_cache_seconds"})
_ALIASES = {"prediction_writer": "writer"}
_bare_lock = threading.Lock()


def per_app(app: Any, name: str, build: Callable[[], T]) -> T:
    """The per-app cache `name`: `app.state.services.<name>` when the lifespan built the
    services; else `app.state.<name>`, built by `build` on first use and kept unless it is None.

    The "else" serves an app without `Services` (a bare `FastAPI()` with one router, in tests)
    and `key_cache`, which is not a field: `app.state` promises it reads through only to
    services, and a key cache set on `app.state` (a test's short TTL) must win.
    """
    state = app.state
    services = getattr(state, "services", None)
    if isinstance(services, Services) and name in _SERVICE_NAMES:
        value: T = getattr(services, name)
        return value
    with _bare_lock:  # /metrics runs in the thread pool
        try:
            existing: T = getattr(state, name)
        except AttributeError:
            existing = build()
            if existing is not None:
                setattr(state, name, existing)
        return existing


class AppState(State):
    """`app.state` with `services` as its one attribute set by the lifespan.

    The names of the services (`app.state.store`, `app.state.upstream`, …) stay readable, as a
    view onto `services`, for code and tests written against them.
    """

    def __getattr__(self, key: Any) -> Any:
        try:
            return self._state[key]
        except KeyError:
            pass
        name = _ALIASES.get(key, key)
        services = self._state.get("services")
        if services is not None and (name in _SERVICE_NAMES or name in _SETTABLE):
            return getattr(services, name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'")

    def __setattr__(self, key: Any, value: Any) -> None:
        services = self._state.get("services")
        if key in _SETTABLE and services is not None:
            setattr(services, key, value)
        else:
            super().__setattr__(key, value)
