"""One refit attempt for one (model, task): lease → window → fit → save → audit log.

`run_refit` is synchronous and self-contained (it only needs a `Store`), so the same code runs
in a worker process of the gateway (`RefitRunner`), in a thread, and in `calib refit` (cron).

Steps (docs/refit.md):

1. take the lease ``refit:<model>:<task>``; if another holder has it, stop: status ``busy``,
   reason "another replica is refitting" (nothing recorded); likewise when another attempt
   finished after this one was requested (overlapping triggers coalesce into one refit);
2. record the attempt (`profile_events`, status ``running``);
3. optionally require ``min_new_labels`` labels newer than the last finished refit (the
   scheduler's trigger, re-checked under the lease so two replicas never fit the same data);
4. load the rolling window (labels newer than ``max_age_s``, at most the newest ``max_labels``)
   and pack it into a `LabeledSet` (`service.refit.dataset`);
5. `calibrators.refit.refit_profile` against the profile now served for (model, task);
6. save the candidate as the next version, active or not, with the reason and metrics;
7. finish the audit-log entry, count the outcome in the store's refit tallies (what `/metrics`
   exports in every replica, whichever process ran the refit) and release the lease.

Statuses: ``activated``, ``rejected`` (champion kept), ``insufficient_labels``,
``no_new_labels``, ``failed`` (an error; the reason says which), ``busy``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from calibrators import CONFIDENCE_LOGIT, Profile
from calibrators.refit import RefitPolicy, refit_profile
from service.refit.dataset import build_labeled_set
from service.store import ProfileEvent, Store, StoreError
from service.store.records import utcnow

__all__ = [
    "BUSY_REASON",
    "FINISHED_STATUSES",
    "FITTED_STATUSES",
    "RefitConfig",
    "RefitOutcome",
    "lease_name",
    "new_refit_id",
    "replica_id",
    "run_refit",
    "run_refit_in_worker",
    "served_profile",
]

logger = logging.getLogger(__name__)

BUSY_REASON = "another replica is refitting"
#: Attempts that fitted a challenger (the metrics' "last successful refit").
FITTED_STATUSES = ("activated", "rejected")
#: Attempts that ran to the end (the scheduler counts new labels after the newest of these).
FINISHED_STATUSES = (*FITTED_STATUSES, "insufficient_labels")


def lease_name(model: str, task: str) -> str:
    return f"refit:{model}:{task}"


def new_refit_id() -> str:
    return "refit_" + secrets.token_hex(8)


def replica_id() -> str:
    """Who this process is, for lease holders and the audit log."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class RefitConfig(RefitPolicy):
    """The refit settings: the fit policy plus the data window and the lease (picklable: it
    crosses into the worker process)."""

    max_age_s: float | None = 30 * 86400.0
    max_labels: int = 1_000_000
    lease_ttl_s: float = 600.0

    @classmethod
    def from_settings(cls, settings: Any) -> RefitConfig:
        """Every `refit_<name>` setting that names a field of this class."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: getattr(settings, f"refit_{name}") for name in names})

    def policy(self) -> RefitPolicy:
        """Just the fit policy, for `calibrators.refit.refit_profile`."""
        return RefitPolicy(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(RefitPolicy)}
        )


@dataclass
class RefitOutcome:
    """What one attempt did (the body of the refit endpoints, one line of `calib refit`)."""

    id: str
    model: str
    task: str
    status: str
    reason: str
    trigger: str = "manual"
    version: int | None = None  # the version this attempt saved (active or not)
    active_version: int | None = None  # the active version after the attempt
    method: str | None = None
    temperature: float | None = None
    threshold: float | None = None
    n_labels: int = 0
    metrics: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def activated(self) -> bool:
        return self.status == "activated"

    def to_dict(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["object"] = "calibration.refit"
        body["activated"] = self.activated
        for key in ("started_at", "finished_at"):
            if body[key] is not None:
                body[key] = body[key].isoformat()
        return body


def served_profile(store: Store, model: str, task: str) -> Profile:
    """What (model, task) is calibrated with right now (as `ProfileCache` resolves it)."""
    profile = store.active_profile(model, task)
    if profile is None and task != "default":
        profile = store.active_profile(model, "default")
    return profile if profile is not None else Profile.identity(model, task)


def _describe(profile: Profile) -> tuple[str, float | None, float | None]:
    temperature = None
    if profile.method == "temperature" and profile.calibrator:
        temperature = float(profile.calibrator.get("temperature", 1.0))
    return profile.method, temperature, profile.threshold


def run_refit(
    store: Store,
    config: RefitConfig,
    model: str,
    task: str = "default",
    *,
    refit_id: str | None = None,
    trigger: str = "manual",
    holder: str | None = None,
    min_new_labels: int = 0,
    requested_at: datetime | None = None,
) -> RefitOutcome:
    """Run one attempt (see the module docstring); never raises for a failed fit.

    Triggers that overlap coalesce: if another attempt on (model, task) finished after this
    one was requested (`requested_at`, default now), this one reports ``busy`` too instead of
    fitting the same labels again right after it.
    """
    refit_id = refit_id or new_refit_id()
    holder = f"{holder or replica_id()}:{refit_id}"
    started = utcnow()
    requested_at = requested_at or started
    t0 = time.perf_counter()
    outcome = RefitOutcome(refit_id, model, task, "running", "", trigger, started_at=started)
    name = lease_name(model, task)
    if not store.acquire_lease(name, holder, config.lease_ttl_s):
        outcome.status, outcome.reason = "busy", BUSY_REASON
        outcome.finished_at = utcnow()
        outcome.duration_s = time.perf_counter() - t0
        return outcome
    try:
        last = store.last_refit(model, task)
    except StoreError:
        last = None
    if last is not None and last.finished_at is not None and last.finished_at >= requested_at:
        store.release_lease(name, holder)
        outcome.status = "busy"
        outcome.reason = f"{BUSY_REASON} (its attempt {last.id} finished while this one waited)"
        outcome.version = last.version
        outcome.finished_at = utcnow()
        outcome.duration_s = time.perf_counter() - t0
        return outcome
    event = ProfileEvent(refit_id, model, task, "refit", "running", started, trigger, holder=holder)
    try:
        store.add_event(event)
        try:
            _attempt(store, config, outcome, event, holder, min_new_labels)
        except Exception as error:  # a failed fit is an outcome, not a crash of the caller
            logger.exception("refit %s of %s/%s failed", refit_id, model, task)
            outcome.status = "failed"
            outcome.reason = f"{type(error).__name__}: {error}"[:1000]
        outcome.finished_at = utcnow()
        outcome.duration_s = time.perf_counter() - t0
        event.status, event.reason = outcome.status, outcome.reason
        event.version, event.n_labels = outcome.version, outcome.n_labels
        event.metrics = _event_metrics(outcome)
        event.finished_at = outcome.finished_at
        store.finish_refit(event, outcome.duration_s)  # the audit log and the refit counters
    except StoreError as error:
        outcome.status, outcome.reason = "failed", f"store error: {error}"
        outcome.finished_at = utcnow()
        outcome.duration_s = time.perf_counter() - t0
    finally:
        try:
            store.release_lease(name, holder)
        except StoreError:
            logger.warning("could not release lease %s (it will expire)", name)
    return outcome


def _event_metrics(outcome: RefitOutcome) -> dict[str, Any] | None:
    if outcome.metrics is None:
        return {"timings": outcome.timings} if outcome.timings else None
    slim = {k: v for k, v in outcome.metrics.items() if k != "reference_confidences"}
    return {**slim, "timings": outcome.timings}


def _attempt(
    store: Store,
    config: RefitConfig,
    outcome: RefitOutcome,
    event: ProfileEvent,
    holder: str,
    min_new_labels: int,
) -> None:
    model, task = outcome.model, outcome.task
    timings = outcome.timings
    if min_new_labels > 0:
        last = store.last_refit(model, task, statuses=FINISHED_STATUSES)
        after = last.labels_until if last is not None else None
        new = store.count_labels(model, task, after=after)
        if new < min_new_labels:
            outcome.status = "no_new_labels"
            outcome.reason = f"{new} new labels since the last refit, need {min_new_labels}"
            return

    served = served_profile(store, model, task)
    base = dataclasses.replace(served, task=task)
    preferred = served.mode if served.method != "none" else "options"
    since = None
    if config.max_age_s is not None:
        since = utcnow() - timedelta(seconds=config.max_age_s)
    t = time.perf_counter()
    batches = store.labeled_rows(model, task, since=since, limit=config.max_labels)
    wants_signals = any(name != CONFIDENCE_LOGIT for names in config.feature_sets for name in names)
    data, info = build_labeled_set(batches, preferred_mode=preferred, signals=wants_signals)
    timings["load_s"] = time.perf_counter() - t
    event.labels_until = info.labels_until  # type: ignore[assignment]
    outcome.n_labels = len(data)
    store.acquire_lease(lease_name(model, task), holder, config.lease_ttl_s)  # renew

    t = time.perf_counter()
    result = refit_profile(data, base, config.policy())
    timings["fit_s"] = time.perf_counter() - t
    store.acquire_lease(lease_name(model, task), holder, config.lease_ttl_s)  # renew

    dataset = info.to_dict()
    active = store.active_version(model, task)
    outcome.active_version = active.version if active is not None else None
    if result.candidate is None:
        outcome.status, outcome.reason = "insufficient_labels", result.reason
        outcome.metrics = {"dataset": dataset}
        return
    candidate = dataclasses.replace(result.candidate, notes="refit")
    metrics = {**result.metrics, "labels": len(data), "dataset": dataset}
    t = time.perf_counter()
    saved = store.save_profile(
        candidate, activate=result.activate, reason=f"refit: {result.reason}", metrics=metrics
    )
    timings["save_s"] = time.perf_counter() - t
    outcome.status = "activated" if result.activate else "rejected"
    outcome.reason = result.reason
    outcome.version = saved.version
    if result.activate:
        outcome.active_version = saved.version
    outcome.method, outcome.temperature, outcome.threshold = _describe(saved)
    outcome.metrics = metrics


# --------------------------------------------------------------------------- worker process

_worker_stores: dict[str, Store] = {}
_worker_lock = threading.Lock()


def run_refit_in_worker(url: str, config: RefitConfig, model: str, task: str, **kwargs: Any):
    """Entry point in a worker process: one `Store` per URL, kept for the next refit."""
    with _worker_lock:
        store = _worker_stores.get(url)
        if store is None:
            store = _worker_stores[url] = Store.open(url, migrate_schema=False)
    return run_refit(store, config, model, task, **kwargs)
