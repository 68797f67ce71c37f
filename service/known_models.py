"""Which model names get a `model` label value of their own on `/metrics`.

The `model` of a request is whatever the client wrote. Counting every name as its own series
lets a client fill `/metrics` with made-up names (each a 404 from the upstream), and a
first-come bound lets those names push a real model out. So only names the gateway has reason
to believe in get their own value: the configured models (`models` in the settings) and the
models the upstream lists on ``GET {upstream}/models``. Anything else counts as ``_other``.

`KnownModels` registers both sets with `service.metrics` and keeps the upstream's list fresh:
one refresh when the app starts (awaited briefly, so listed models have their labels from the
first request), then one every `upstream_models_refresh_s` in the background. A failed refresh
(upstream down, an error status, a body without a model list) keeps the last list. Models of a
per-model `upstream` are configured, so only the global upstream is asked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from service import metrics
from service.background import cancel_and_wait
from service.errors import APIError

__all__ = ["KnownModels", "model_ids"]

logger = logging.getLogger(__name__)

#: How long start-up waits for the first list (the refresh goes on in the background after).
FIRST_LIST_WAIT_S = 5.0
#: Timeout of one `GET /models` (a listing is small; a slow upstream must not pile up refreshes).
LIST_TIMEOUT_S = 10.0


def model_ids(body: Any) -> frozenset[str]:
    """The model ids of an OpenAI ``/models`` body; ValueError when it is not one."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ValueError("the upstream's /models answer has no `data` list")
    ids = (entry.get("id") if isinstance(entry, dict) else None for entry in data)
    return frozenset(name for name in ids if isinstance(name, str) and name)


class KnownModels:
    """The configured models plus the upstream's current list, as metric label values."""

    def __init__(
        self,
        upstream: Any,
        configured: Iterable[str],
        *,
        interval_s: float,
        source: str,
    ) -> None:
        self.upstream = upstream
        self.configured = frozenset(configured)
        self.interval_s = interval_s
        self.source = source
        #: The upstream's last listed models (empty until a refresh succeeded).
        self.listed: frozenset[str] = frozenset()
        #: Refreshes that succeeded / failed so far.
        self.refreshes = 0
        self.failures = 0
        self._failing = False
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def _listed_source(self) -> str:
        return f"{self.source}:upstream"

    @property
    def _configured_source(self) -> str:
        return f"{self.source}:configured"

    async def start(self, first_wait_s: float = FIRST_LIST_WAIT_S) -> None:
        """Register the configured models, start refreshing, wait up to `first_wait_s` for the
        first list (the gateway starts anyway when the upstream is down)."""
        metrics.set_known_models(self._configured_source, self.configured)
        self._task = asyncio.create_task(self._loop(), name="known-models")
        try:
            await asyncio.wait_for(self._first.wait(), timeout=first_wait_s)
        except TimeoutError:
            logger.warning(
                "the upstream did not list its models within %.0f s; until it does, only "
                "configured models get a metric label of their own",
                first_wait_s,
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        metrics.forget_known_models(self._configured_source)
        metrics.forget_known_models(self._listed_source)

    async def refresh(self) -> bool:
        """Ask the upstream for its models once; True when the list was replaced."""
        try:
            reply = await self.upstream.get_json(None, "models", timeout=LIST_TIMEOUT_S)
            names = model_ids(reply.body)
        except (APIError, ValueError) as error:
            self.failures += 1
            message = error.message if isinstance(error, APIError) else str(error)
            if not self._failing:
                logger.warning(
                    "listing the upstream's models failed (%s); keeping the last list of %d",
                    message,
                    len(self.listed),
                )
            self._failing = True
            return False
        if self._failing:
            logger.info("listing the upstream's models works again (%d models)", len(names))
        self._failing = False
        self.listed = names
        self.refreshes += 1
        metrics.set_known_models(self._listed_source, names)
        return True

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # whatever one refresh ran into, keep the last list and go on
                logger.exception("refreshing the upstream's model list failed")
            self._first.set()
            await asyncio.sleep(self.interval_s)
