"""Profile operations shared by the admin API (`service/routes/calibration.py`) and the CLI
(`calib profile ...`): a rollback, a manual edit, and the audit-log entry each one leaves.

Synchronous store calls (the routes run them in a thread); the caller invalidates its caches.
Every activation is recorded in the profile audit log with who did it (`by`) and from where
(`trigger`: "api" or "cli"), so `GET /v1/calibration/models/{model}` shows the same history
whichever way the change was made.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.store import ProfileEvent, Store
from service.store.records import utcnow

if TYPE_CHECKING:
    from calibrators import Profile

__all__ = ["Rollback", "record_event", "rollback", "save_manual_edit"]


@dataclass(frozen=True)
class Rollback:
    """A done rollback: the version now active and the one active before (None: none was)."""

    version: int
    previous: int | None
    event: ProfileEvent


def record_event(
    store: Store, model: str, task: str, kind: str, reason: str, version: int, *, trigger: str
) -> ProfileEvent:
    """Append a finished activation (`kind`: "rollback", "manual") to the audit log."""
    now = utcnow()
    event = ProfileEvent(
        id=f"{kind}_{secrets.token_hex(8)}",
        model=model,
        task=task,
        kind=kind,
        status="activated",
        started_at=now,
        trigger=trigger,
        reason=reason,
        version=version,
        finished_at=now,
    )
    store.add_event(event)
    return event


def rollback(
    store: Store, model: str, task: str, version: int, *, by: str, trigger: str
) -> Rollback:
    """Re-activate stored `version` of (model, task) and record it; `ProfileNotFound` if that
    version does not exist (nothing changes then)."""
    previous = store.active_version(model, task)
    store.activate_profile_version(model, task, version)
    was = previous.version if previous is not None else None
    reason = f"rollback: version {version} re-activated (was {was}) by {by}"
    event = record_event(store, model, task, "rollback", reason, version, trigger=trigger)
    return Rollback(version=version, previous=was, event=event)


def save_manual_edit(
    store: Store,
    model: str,
    task: str,
    edited: Profile,
    changes: list[str],
    *,
    by: str,
    trigger: str,
) -> Profile:
    """Store a hand-edited profile as the new active version and record it; `changes` says
    what was set (e.g. ``["threshold=0.7"]``). Returns the profile with its version number."""
    reason = f"manual: {', '.join(changes)} (by {by})"
    saved = store.save_profile(edited, activate=True, reason=reason, metrics=edited.metrics)
    record_event(store, model, task, "manual", reason, saved.version, trigger=trigger)
    return saved
