"""The FastAPI application: `create_app(settings)` wires the gateway together.

The lifespan opens what every request shares and closes it on shutdown, in this order:

1. the store (`Store.open` runs migrations; done in a thread, it is blocking I/O);
2. the write-behind `PredictionWriter` (predictions are batched behind responses), with the
   input-shift monitor embedding request inputs on its thread (`service.shift`);
3. the `ProfileCache` (active calibration profile per model and task, short TTL);
4. the open-mode check (no API keys: allowed on loopback with a loud warning, refused on a
   public address unless `insecure`);
5. one pooled upstream client;
6. the known models (configured ones plus the upstream's list, refreshed in the background):
   the only `model` label values on `/metrics` (service/known_models.py);
7. the per-app caches (feedback rate buckets, prompt-optimization tasks, the
   calibration-health collector), fields of `Services`; the API key cache is made on first
   use (`service.services.per_app`);
8. the heap built so far is frozen out of garbage collection (`service.gc_freeze`; thawed on
   shutdown).

Shutdown flushes the writer (no accepted prediction is lost) and closes the client and store.
Requests reach these through `request.app.state.services` (`service.services.Services`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service import metrics
from service.auth import check_open_mode
from service.body_limit import BodyLimitMiddleware
from service.calibration_health import CalibrationCollector, make_calibration_source
from service.errors import document_errors, install_error_handlers
from service.gc_freeze import freeze_heap, thaw_heap
from service.guarantee_monitor import GuaranteeCollector, make_guarantee_source
from service.known_models import KnownModels
from service.memory_trim import ActivityCounter, IdleMemoryTrimmer
from service.profiles import ProfileCache
from service.proxy import ProxyFastPath, Upstream
from service.refit import RefitRunner, RefitScheduler
from service.routes import calibration, feedback, health, prompt_opt, proxy, shift
from service.routes import metrics as metrics_routes
from service.services import AppState, Services
from service.settings import Settings, load_settings
from service.shift import ShiftMonitor
from service.store import PredictionWriter, Store
from service.version import __version__

__all__ = ["create_app"]

logger = logging.getLogger("service.app")

_OPEN_MODE_BANNER = "!" * 78


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway app for `settings` (default: `load_settings()` from env/config)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await asyncio.to_thread(Store.open, settings.database_url)
        writer = None
        upstream = None
        runner = scheduler = None
        known_models: KnownModels | None = None
        trimmer: IdleMemoryTrimmer | None = None
        try:
            warning = await _maybe_await(await asyncio.to_thread(check_open_mode, settings, store))
            if warning:
                logger.warning("%s\n%s\n%s", _OPEN_MODE_BANNER, warning, _OPEN_MODE_BANNER)
            monitor = _shift_monitor(settings, store)
            writer = PredictionWriter(
                store,
                flush_interval_s=settings.prediction_flush_interval_s,
                batch_size=settings.prediction_batch_size,
                buffer_limit=settings.prediction_buffer_limit,
                on_flush=metrics.sync_prediction_writer,
                before_write=monitor.before_write if monitor is not None else None,
            )
            await writer.start()
            upstream = Upstream(settings)
            known_models = KnownModels(
                upstream,
                settings.models,
                interval_s=settings.upstream_models_refresh_s,
                source=f"app-{id(app):x}",
            )
            await known_models.start()
            trimmer = IdleMemoryTrimmer()
            trimmer.start()
            profiles = ProfileCache(store)
            # --- refit and calibration health (docs/refit.md, docs/metrics.md) ---
            collector = CalibrationCollector(
                make_calibration_source(store), refit_source=store.refit_tallies
            )
            runner = RefitRunner(store, settings, profiles=profiles, collector=collector)
            if settings.refit_enabled:
                scheduler = RefitScheduler(store, runner, settings)
                scheduler.start()
            app.state.services = Services(
                settings=settings,
                store=store,
                writer=writer,
                profiles=profiles,
                upstream=upstream,
                known_models=known_models,
                refit_runner=runner,
                refit_scheduler=scheduler,
                calibration_source=collector.source,
                refit_source=store.refit_tallies,
                feedback_buckets=feedback.feedback_buckets(settings),
                prompt_opt_tasks=set(),
                calibration_collector=collector,
                shift=monitor,
                guarantee_collector=GuaranteeCollector(make_guarantee_source(store)),
            )
            logger.info(
                "gateway ready: upstream %s, store %s",
                settings.upstream,
                _redact(settings.database_url),
            )
            freeze_heap()  # full collections skip what startup built (service/gc_freeze.py)
            yield
        finally:
            thaw_heap()
            if trimmer is not None:
                await trimmer.stop()
            if scheduler is not None:
                await scheduler.stop()
            if runner is not None:
                await runner.aclose()
            if writer is not None:
                try:
                    await writer.close()
                except Exception:
                    logger.exception("flushing predictions on shutdown failed")
            if known_models is not None:
                await known_models.stop()
            if upstream is not None:
                await upstream.aclose()
            await asyncio.to_thread(store.close)

    app = FastAPI(
        **_telemetry_options(settings),
        title="mllm-calib gateway",
        version=__version__,
        summary="OpenAI-compatible proxy in front of vLLM that adds calibrated confidence, "
        "abstention and a feedback loop.",
        lifespan=lifespan,
    )
    app.state = AppState()
    # Reachable before the lifespan runs too (e.g. for tests that inspect the app).
    app.state.settings = settings
    install_error_handlers(app)
    document_errors(app)
    # Added first, so it runs inside the body limit (later additions wrap earlier ones).
    app.add_middleware(ProxyFastPath)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ActivityCounter)  # outermost: sees every request (memory_trim.py)
    app.include_router(proxy.router)
    app.include_router(feedback.router)
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    app.include_router(shift.router)  # before calibration's `/models/{model:path}` catch-all
    app.include_router(calibration.router)
    app.include_router(prompt_opt.router)
    return app


def _shift_monitor(settings: Settings, store: Store) -> ShiftMonitor | None:
    """The input-shift gauge (docs/refit.md, "Input shift"), unless `shift_enabled` is off."""
    if not settings.shift_enabled:
        return None
    return ShiftMonitor(
        store,
        window_size=settings.shift_window,
        reference_size=settings.shift_reference_size,
        alpha=settings.shift_alpha,
        permutations=settings.shift_permutations,
        min_samples=settings.shift_min_samples,
        max_age_s=settings.refit_max_age_s,
    )


def _telemetry_options(settings: Settings) -> dict[str, Any]:
    """FastAPI's native OpenTelemetry switched off unless asked for (older FastAPI has none)."""
    if settings.opentelemetry or "telemetry" not in inspect.signature(FastAPI).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _redact(url: str) -> str:
    """A database URL without its password, for logs."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
