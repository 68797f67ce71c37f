"""The app's shared services, built once in the lifespan (service/app.py).

One typed container instead of loose `app.state` attributes: a route or the request path reads
`request.app.state.services` and gets every collaborator with its type. Nothing here is filled
lazily; what a service needs at request time it gets from this object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from starlette.datastructures import State

if TYPE_CHECKING:
    from service.known_models import KnownModels
    from service.profiles import ProfileCache
    from service.proxy import Upstream
    from service.refit import RefitRunner, RefitScheduler
    from service.settings import Settings
    from service.store import PredictionWriter, Store

__all__ = ["AppState", "Services"]


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


_SERVICE_NAMES = frozenset(f.name for f in fields(Services))
_ALIASES = {"prediction_writer": "writer"}


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
        if services is not None and name in _SERVICE_NAMES:
            return getattr(services, name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'")
