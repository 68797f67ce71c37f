"""`kill -9` the gateway (`calib serve`, a real process on a SQLite file) in the middle of work,
restart it, and check what survived: every feedback that got a 2xx, and the active profile; a refit
killed half-way leaves the old profile active and its lease expires, so the next refit runs."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import httpx

from calibrators import Profile
from service.store import PredictionRecord, Store
from tests.refit.helpers import insert_labeled_options
from tests.reliability.processes import Serve

ADMIN = "sk-crash-admin-31415"
N_PREDICTIONS = 1500
THREADS = 6


def _prediction() -> PredictionRecord:
    return PredictionRecord(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        model="mcq",
        task="default",
        tenant="default",
        mode="options",
        options=["A", "B", "C", "D"],
        idk_option=None,
        answer="B",
        raw_confidence=0.7,
        confidence=0.65,
        features={"option_logprobs": [-2.0, -0.4, -3.0, -4.0], "answer_index": 1},
    )


def _seed_profile(store: Store) -> int:
    """An active manual profile (version 1): it must come through every crash unchanged."""
    profile = dataclasses.replace(
        Profile.identity("mcq", "default"),
        method="temperature",
        calibrator={"type": "temperature", "temperature": 1.7},
        threshold=0.42,
    )
    return store.save_profile(profile, activate=True, reason="manual: crash test").version


def _assert_profile_intact(store: Store, version: int) -> None:
    active = store.active_version("mcq", "default")
    assert active is not None and active.version == version
    assert active.profile.threshold == 0.42
    assert active.profile.calibrator["temperature"] == 1.7


def test_every_acknowledged_feedback_survives_kill_9(upstream_double, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'calib.db'}"
    store = Store.open(db)
    predictions = [_prediction() for _ in range(N_PREDICTIONS)]
    store.insert_predictions(predictions)
    version = _seed_profile(store)
    store.close()

    serve = Serve(tmp_path, upstream_double.base_url, db, admin_key=ADMIN, refit_enabled="false")
    serve.wait_ready()
    acked: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def post(share: list[PredictionRecord]) -> None:
        with httpx.Client(
            base_url=serve.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5
        ) as http:
            for n, record in enumerate(share):
                body = {"id": record.id, "correct": bool(n % 2)}
                try:
                    response = http.post("/v1/feedback", json=body)
                except httpx.TransportError as error:
                    errors.append(type(error).__name__)
                    return  # the gateway is gone
                if response.is_success:
                    with lock:
                        acked.append(record.id)

    threads = [
        threading.Thread(target=post, args=(predictions[i::THREADS],)) for i in range(THREADS)
    ]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acked) < 150 and time.monotonic() < deadline:  # well into the burst
            time.sleep(0.01)
        serve.kill9()
        for thread in threads:
            thread.join(timeout=10)
    finally:
        serve.stop()
    assert 150 <= len(acked) < N_PREDICTIONS, "the kill must land mid-burst"
    assert errors, "the clients saw the crash"

    restarted = Serve(tmp_path, upstream_double.base_url, db, admin_key=ADMIN)
    try:
        restarted.wait_ready()
        with httpx.Client(
            base_url=restarted.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        ) as http:
            for pid in acked[::25]:  # through the API, a sample
                assert http.get(f"/v1/feedback/{pid}").status_code == 200, pid
        store = Store.open(db)
        try:
            missing = [pid for pid in acked if store.get_feedback(pid) is None]
            assert not missing, f"{len(missing)} acknowledged feedbacks lost"
            _assert_profile_intact(store, version)
        finally:
            store.close()
    finally:
        restarted.stop()


def _lease_held(db_path: Path) -> bool:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT count(*) FROM leases WHERE name LIKE 'refit:%'").fetchone()[0]


def test_a_refit_killed_half_way_keeps_the_old_profile_and_its_lease_expires(
    upstream_double, tmp_path: Path
):
    db_path = tmp_path / "calib.db"
    db = f"sqlite:///{db_path}"
    store = Store.open(db)
    insert_labeled_options(store, "mcq", "default", 30_000, true_t=2.0, seed=7)  # a slow refit
    version = _seed_profile(store)
    store.close()
    settings = {
        "admin_key": ADMIN,
        "refit_enabled": "false",
        "refit_executor": "thread",  # the refit dies with the process
        "refit_lease_ttl_s": 4,
    }
    headers = {"Authorization": f"Bearer {ADMIN}"}

    serve = Serve(tmp_path, upstream_double.base_url, db, **settings)
    try:
        serve.wait_ready()
        started = httpx.post(
            f"{serve.url}/v1/calibration/models/mcq/refit",
            params={"wait": "false"},
            headers=headers,
            timeout=10,
        )
        assert started.status_code == 202, started.text
        deadline = time.monotonic() + 10
        while not _lease_held(db_path):
            assert time.monotonic() < deadline, "the refit never took its lease"
            time.sleep(0.005)
        serve.kill9()  # mid-refit: lease taken, nothing activated yet
    finally:
        serve.stop()
    killed_at = time.monotonic()
    assert _lease_held(db_path)  # a crashed holder cannot release it ...

    restarted = Serve(tmp_path, upstream_double.base_url, db, **settings)
    try:
        restarted.wait_ready()
        store = Store.open(db)
        try:
            _assert_profile_intact(store, version)  # the old profile is still the active one
        finally:
            store.close()
        with httpx.Client(base_url=restarted.url, headers=headers, timeout=120) as http:
            refit = "/v1/calibration/models/mcq/refit"
            if time.monotonic() - killed_at < 3:  # ... so within its TTL a refit is refused
                busy = http.post(refit)
                assert busy.status_code == 409, busy.text
                assert busy.json()["error"]["code"] == "refit_in_progress"
            time.sleep(max(0.0, killed_at + 4.5 - time.monotonic()))  # ... until it expires
            done = http.post(refit)
            assert done.status_code == 200, done.text
            assert done.json()["status"] in ("activated", "rejected")
            assert done.json()["n_labels"] == 30_000
            # The crashed attempt stays visible in the audit log as never finished.
            history = http.get("/v1/calibration/models/mcq", params={"task": "default"})
            assert history.status_code == 200
        assert not _lease_held(db_path)  # the successful refit released its lease
    finally:
        restarted.stop()
