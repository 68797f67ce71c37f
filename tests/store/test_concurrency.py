"""Several threads and several `Store` objects (like gateway workers) on one database."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from service.store import FeedbackItem, Store


def test_concurrent_writers_do_not_fail(store_url: str, make_prediction) -> None:
    stores = [Store.open(store_url) for _ in range(3)]  # three "workers"
    batches = [[make_prediction() for _ in range(20)] for _ in range(24)]

    def work(index: int) -> None:
        store = stores[index % len(stores)]
        batch = batches[index]
        store.insert_predictions(batch)
        store.record_feedback([FeedbackItem(p.id, correct=True) for p in batch], "acme", False)
        store.count_keys()

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(len(batches))))
    assert stores[0].count_predictions() == 24 * 20
    for store in stores:
        store.close()


def test_racing_identical_feedback_is_created_once(store_url: str, make_prediction) -> None:
    stores = [Store.open(store_url) for _ in range(4)]
    preds = [make_prediction() for _ in range(30)]
    stores[0].insert_predictions(preds)

    def post(index: int) -> list[str]:
        items = [FeedbackItem(p.id, label="B") for p in preds]
        return [r.status for r in stores[index].record_feedback(items, "acme", False)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(post, range(4)))
    for column in zip(*statuses, strict=True):
        assert sorted(column) == ["created", "unchanged", "unchanged", "unchanged"]
    for store in stores:
        store.close()
