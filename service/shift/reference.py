"""The reference sample of a profile version: input embeddings of the data it was fitted on.

A refit fits on the labeled predictions of (model, task) whose label is at most `max_age_s` old,
newest first (service/refit/job.py); its audit-log entry keeps `labels_until`, the newest label
it used. The reference of a version is the newest `size` labeled predictions inside that window
(label time in ``[started_at - max_age_s, labels_until]``) that carry an input embedding.

A version that no refit produced (a manual edit) was chosen by an operator looking at the data
of its day: its window ends when the version was saved. A rollback re-activates a version, and
with it that version's own window. Rows are read through `Store.labeled_rows` (the refit's own
reader), newest first; the scan stops after `size` usable rows or `max_scan` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from service.shift.inputs import FEATURE_KEYS, MODALITIES
from service.store import Store

__all__ = ["ReferenceSample", "load_reference"]


@dataclass(frozen=True)
class ReferenceSample:
    """The embeddings of one version's fit window, per modality (rows: predictions)."""

    model: str
    task: str  # the profile's task (a task without its own profile is served by "default")
    version: int
    rows: int  # labeled predictions with at least one embedding
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    until: datetime | None = None


def _window(
    store: Store, model: str, task: str, version: int, max_age_s: float | None
) -> tuple[datetime | None, datetime | None]:
    stored = store.profile_version(model, task, version)
    if stored is None:
        return None, None
    until = stored.created_at
    start = stored.created_at
    for event in store.profile_events(model, task, limit=500):
        if event.kind == "refit" and event.version == version and event.labels_until is not None:
            until, start = event.labels_until, event.started_at
            break
    since = start - timedelta(seconds=max_age_s) if max_age_s is not None else None
    return since, until


def load_reference(
    store: Store,
    model: str,
    task: str,
    version: int,
    *,
    size: int,
    max_age_s: float | None,
    max_scan: int = 50_000,
) -> ReferenceSample:
    """The reference of (model, task) version `version` (empty when nothing carries one)."""
    since, until = _window(store, model, task, version, max_age_s)
    if until is None:
        return ReferenceSample(model, task, version, 0)
    until_aware = _aware(until)
    found: dict[str, list[list[float]]] = {modality: [] for modality in MODALITIES}
    rows = scanned = 0
    for batch in store.labeled_rows(model, task, since=since, batch_size=2000):
        for row in batch:
            scanned += 1
            if _aware(row.labeled_at) > until_aware:
                continue
            features = row.features or {}
            usable = False
            for modality in MODALITIES:
                vector = features.get(FEATURE_KEYS[modality])
                if isinstance(vector, list) and vector:
                    found[modality].append([float(x) for x in vector])
                    usable = True
            rows += usable
            if rows >= size or scanned >= max_scan:
                break
        if rows >= size or scanned >= max_scan:
            break
    samples: dict[str, np.ndarray] = {}
    for modality, vectors in found.items():
        width = max((len(v) for v in vectors), default=0)
        same = [v for v in vectors if len(v) == width]  # an older embedding size: left out
        if same:
            samples[modality] = np.asarray(same, dtype=np.float64)
    return ReferenceSample(model, task, version, rows, samples, until)


def _aware(moment: datetime) -> datetime:
    """SQLite gives naive UTC datetimes back; compare everything as aware UTC."""
    from datetime import UTC

    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
