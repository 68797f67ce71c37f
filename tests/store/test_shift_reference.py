"""The input-shift reference of a profile version, read from a real store (SQLite, PostgreSQL),
and the writer hook that stores the embeddings."""

from __future__ import annotations

import time

from calibrators import Profile
from service.shift import load_reference
from service.store import FeedbackItem, PredictionWriter, ProfileEvent, Store
from service.store.records import utcnow

MODEL, TASK = "vlm", "shift-ref"


def _labeled(store: Store, make_prediction, start: int, n: int, value: float) -> list[str]:
    records = [
        make_prediction(
            id=f"p{start + i}",
            model=MODEL,
            task=TASK,
            features={"input_embedding_image": [value, float(start + i)], "answer_index": 1},
        )
        for i in range(n)
    ]
    store.insert_predictions(records)
    store.record_feedback([FeedbackItem(r.id, correct=True) for r in records], "default", True)
    return [r.id for r in records]


def _refit_version(store: Store, labels_until) -> int:  # type: ignore[no-untyped-def]
    saved = store.save_profile(
        Profile(model=MODEL, task=TASK, method="none"), activate=True, reason="refit: test"
    )
    event = ProfileEvent(
        id=f"refit_{saved.version}",
        model=MODEL,
        task=TASK,
        kind="refit",
        status="activated",
        started_at=labels_until,
        version=saved.version,
        labels_until=labels_until,
        finished_at=utcnow(),
    )
    store.add_event(event)
    return saved.version


def test_a_refit_version_takes_its_fit_window_only(store: Store, make_prediction) -> None:
    _labeled(store, make_prediction, 0, 20, 0.0)
    time.sleep(0.02)
    _labeled(store, make_prediction, 20, 10, 0.0)  # the newest labels of the fit window
    time.sleep(0.02)
    fitted_until = utcnow()
    time.sleep(0.02)
    version = _refit_version(store, fitted_until)
    _labeled(store, make_prediction, 100, 10, 1.0)  # labeled after the fit: not its window

    reference = load_reference(store, MODEL, TASK, version, size=100, max_age_s=None)
    assert reference.rows == 30
    image = reference.samples["image"]
    assert image.shape == (30, 2) and set(image[:, 0]) == {0.0}
    assert "text" not in reference.samples

    newest = load_reference(store, MODEL, TASK, version, size=10, max_age_s=None)
    assert newest.rows == 10 and set(newest.samples["image"][:, 1]) == set(
        map(float, range(20, 30))
    )

    # A manual edit after those labels: its window is everything labeled until it was saved.
    manual = store.save_profile(
        Profile(model=MODEL, task=TASK, method="none"), activate=True, reason="manual"
    )
    later = load_reference(store, MODEL, TASK, manual.version, size=100, max_age_s=None)
    assert later.rows == 40 and set(later.samples["image"][:, 0]) == {0.0, 1.0}

    # A rollback re-activates the refit version: its own window again.
    store.activate_profile_version(MODEL, TASK, version)
    again = load_reference(store, MODEL, TASK, version, size=100, max_age_s=None)
    assert again.rows == 30


def test_unknown_version_has_an_empty_reference(store: Store) -> None:
    reference = load_reference(store, MODEL, TASK, 7, size=10, max_age_s=None)
    assert reference.rows == 0 and reference.samples == {}


async def test_the_writer_hook_adds_features_and_a_failing_hook_loses_nothing(
    store: Store, make_prediction
) -> None:
    def add(records) -> None:  # type: ignore[no-untyped-def]
        for record in records:
            record.features["input_embedding_text"] = [0.5, -0.5]

    writer = PredictionWriter(store, before_write=add)
    await writer.start()
    writer.submit(make_prediction(id="hooked"))
    await writer.flush()
    stored = store.get_prediction("hooked")
    assert stored is not None and stored.features["input_embedding_text"] == [0.5, -0.5]
    await writer.close()

    def broken(records) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    writer = PredictionWriter(store, before_write=broken)
    await writer.start()
    writer.submit(make_prediction(id="kept"))
    await writer.flush()
    assert store.get_prediction("kept") is not None
    await writer.close()
