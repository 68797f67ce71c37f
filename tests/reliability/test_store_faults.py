"""The database locked for a while (another connection holds SQLite's write lock): answers keep
flowing at full speed, predictions wait in the bounded buffer and the overflow is dropped and
counted; feedback is refused with 503 + Retry-After; when the lock goes, the buffer is written."""

from __future__ import annotations

import re
import sqlite3
import time

import httpx

from tests.conftest import start_gateway
from tests.upstream_double import JSONReply, chat_response

STEPS = [(" B", -0.4, [(" B", -0.4), (" A", -1.6), (" C", -3.0), (" D", -4.2)])]
BODY = {"model": "mcq", "messages": [{"role": "user", "content": "Pick one."}]}
BUFFER = 20


def _dropped(http: httpx.Client) -> float:
    match = re.search(r"^calib_predictions_dropped_total (\S+)$", http.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_locked_database_never_blocks_answers_and_buffered_predictions_land(
    upstream_double, double, tmp_path
):
    db = tmp_path / "calib.db"
    gw = start_gateway(
        upstream_double.base_url,
        db,
        db=f"sqlite:///{db}?timeout=0.2",  # a writer gives up on the lock after 200 ms
        refit_enabled=False,
        prediction_buffer_limit=BUFFER,
        prediction_flush_interval_s=0.05,
    )
    double.reply = lambda path, body: JSONReply(chat_response(STEPS))  # a fresh id each time
    writer, store = gw.app.state.writer, gw.app.state.store
    locker = sqlite3.connect(db, isolation_level=None)
    try:
        with httpx.Client(base_url=gw.url, timeout=10) as http:
            _ok = http.post("/v1/chat/completions", json=BODY)
            assert _ok.status_code == 200
            deadline = time.monotonic() + 5
            while writer.pending and time.monotonic() < deadline:
                time.sleep(0.02)
            before = store.count_predictions()
            dropped_before = _dropped(http)

            locker.execute("BEGIN EXCLUSIVE")  # the store is now unwritable
            ids, slowest = [], 0.0
            for _ in range(BUFFER + 15):
                t0 = time.perf_counter()
                response = http.post("/v1/chat/completions", json=BODY)
                slowest = max(slowest, time.perf_counter() - t0)
                assert response.status_code == 200, response.text
                assert response.json()["calibration"]["confidence"] is not None
                ids.append(response.json()["calibration"]["id"])
            assert slowest < 0.5  # never waits on the database (its busy timeout is 200 ms)
            assert writer.pending == BUFFER  # bounded
            deadline = time.monotonic() + 5
            while writer.healthy and time.monotonic() < deadline:  # a write attempt failed
                time.sleep(0.02)
            assert not writer.healthy
            assert _dropped(http) - dropped_before == 15  # the overflow, counted
            assert http.get("/healthz").status_code == 200

            # Feedback is not acknowledged while it cannot be stored.
            refused = http.post("/v1/feedback", json={"id": ids[0], "correct": True})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "store_unavailable"

            locker.execute("ROLLBACK")  # the database is back
            deadline = time.monotonic() + 15  # the writer retries with backoff (≤ 5 s)
            while writer.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            assert writer.pending == 0 and writer.healthy
            assert store.count_predictions() == before + BUFFER
            assert all(store.get_prediction(i) is not None for i in ids[:BUFFER])
            assert all(store.get_prediction(i) is None for i in ids[BUFFER:])  # dropped
            # The client's retry of the feedback now succeeds and is durable.
            retried = http.post("/v1/feedback", json={"id": ids[0], "correct": True})
            assert retried.status_code == 200 and retried.json()["status"] == "created"
            assert store.get_feedback(ids[0]).correct is True
            # Feedback on a dropped prediction is an honest 404, not a false ack.
            assert http.post("/v1/feedback", json={"id": ids[-1], "correct": True}).status_code
            assert store.get_feedback(ids[-1]) is None
            # Serving goes on normally.
            assert http.post("/v1/chat/completions", json=BODY).status_code == 200
    finally:
        locker.close()
        gw.server.stop()
