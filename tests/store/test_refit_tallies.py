"""Refit tallies: each finished refit is counted once, in the transaction that finishes its
audit-log entry, on SQLite and PostgreSQL; the migration counts in refits finished before it."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from service.store import ProfileEvent, Store
from service.store.engine import create_store_engine, migrate
from service.store.records import utcnow
from service.store.schema import profile_events


def _event(id: str, status: str = "running", *, task: str = "t", seconds: float = 0.0):
    started = utcnow() - timedelta(seconds=seconds)
    return ProfileEvent(id, "m", task, "refit", status, started, "cli", finished_at=None)


def _finish(store: Store, event: ProfileEvent, status: str, seconds: float, **kw) -> bool:
    event.status = status
    event.finished_at = event.started_at + timedelta(seconds=seconds)
    return store.finish_refit(event, seconds, **kw)


def _by_key(store: Store) -> dict[tuple[str, str, str, str], tuple[int, float]]:
    return {
        (t.model, t.task, t.status, t.le): (t.count, t.duration_sum) for t in store.refit_tallies()
    }


def test_finished_refits_are_counted_by_status_and_duration_bucket(store: Store) -> None:
    for i, (status, seconds) in enumerate(
        [("activated", 0.3), ("activated", 0.4), ("failed", 0.05), ("rejected", 5000.0)]
    ):
        event = _event(f"r{i}")
        store.add_event(event)
        assert _finish(store, event, status, seconds)
    no_new = _event("r-none")
    store.add_event(no_new)
    _finish(store, no_new, "no_new_labels", 0.01)  # stored, not an attempt to count

    tallies = _by_key(store)
    assert tallies[("m", "t", "activated", "0.5")] == (2, pytest.approx(0.7))
    assert tallies[("m", "t", "failed", "0.1")] == (1, pytest.approx(0.05))
    assert tallies[("m", "t", "rejected", "+Inf")] == (1, pytest.approx(5000.0))
    assert len(tallies) == 3
    assert store.get_event("r-none").status == "no_new_labels"
    assert store.get_event("r2").status == "failed"
    failed = next(t for t in store.refit_tallies() if t.status == "failed")
    assert failed.last_finished_at == store.get_event("r2").finished_at


def test_a_crashed_refit_is_recorded_once(store: Store) -> None:
    # The worker died before recording anything: the event is created, failed and counted.
    assert _finish(store, _event("lost"), "failed", 1.0, unless_finished=True)
    assert store.get_event("lost").status == "failed"
    # The worker finished (and counted) the attempt before the pool broke: left alone.
    done = _event("done")
    store.add_event(done)
    _finish(store, done, "activated", 2.0)
    assert not _finish(store, _event("done"), "failed", 3.0, unless_finished=True)
    assert store.get_event("done").status == "activated"
    tallies = _by_key(store)
    assert tallies[("m", "t", "failed", "1.0")][0] == 1
    assert tallies[("m", "t", "activated", "2.5")][0] == 1
    assert len(tallies) == 2


def test_the_last_failure_time_never_goes_back(store: Store) -> None:
    late, early = _event("late"), _event("early", seconds=3600)
    for event in (late, early):
        store.add_event(event)
    _finish(store, late, "failed", 0.2)
    _finish(store, early, "failed", 0.2)  # finished earlier, recorded later (clock skew)
    (tally,) = store.refit_tallies()
    assert tally.count == 2
    assert tally.last_finished_at == store.get_event("late").finished_at


def test_the_migration_counts_refits_finished_before_it(store_url: str) -> None:
    engine = create_store_engine(store_url)
    migrate(engine, "0004")
    now = utcnow()
    rows = [
        ("a", "activated", 0.3, "m"),
        ("b", "failed", 40.0, "m"),
        ("c", "failed", 50.0, "m"),
        ("d", "no_new_labels", 0.1, "m"),
        ("e", "running", None, "m"),
    ]
    with engine.begin() as conn:
        for id, status, seconds, model in rows:
            conn.execute(
                sa.insert(profile_events).values(
                    id=id,
                    model=model,
                    task="t",
                    kind="refit",
                    status=status,
                    started_at=now - timedelta(seconds=100),
                    finished_at=None if seconds is None else now - timedelta(seconds=100 - seconds),
                )
            )
    engine.dispose()
    store = Store.open(store_url)  # migrates to head
    try:
        tallies = _by_key(store)
        assert tallies == {
            ("m", "t", "activated", "0.5"): (1, pytest.approx(0.3)),
            ("m", "t", "failed", "60.0"): (2, pytest.approx(90.0)),
        }
        failed = next(t for t in store.refit_tallies() if t.status == "failed")
        assert abs((failed.last_finished_at - (now - timedelta(seconds=50))).total_seconds()) < 1e-3
    finally:
        store.close()


def test_the_store_tallies_in_the_buckets_the_metric_exports() -> None:
    from service.metrics import REFIT_BUCKETS
    from service.store.store import REFIT_DURATION_BUCKETS

    assert REFIT_DURATION_BUCKETS == REFIT_BUCKETS
