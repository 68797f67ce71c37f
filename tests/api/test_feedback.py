"""`POST/GET /v1/feedback` on a real uvicorn server: our router, a real SQLite store and writer.

The app is built here from `FastAPI()` + `install_error_handlers` + the feedback router, so these
tests exercise the durable side alone; `test_feedback_through_the_gateway` goes end to end.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.errors import install_error_handlers
from service.routes import feedback
from service.settings import load_settings
from service.store import PredictionRecord, PredictionWriter, Store
from tests.upstream_double import ServerThread

ADMIN_KEY = "test-admin-key-feedback"


@dataclass
class Env:
    url: str
    db_path: Path
    store: Store
    app: FastAPI
    acme: str  # client key of tenant acme
    globex: str  # client key of tenant globex

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0)

    @property
    def writer(self) -> PredictionWriter:
        return self.app.state.writer


def _feedback_app(db_url: str, **settings: object) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = Store.open(db_url)
        # A long interval: predictions stay pending until something flushes them.
        app.state.writer = PredictionWriter(app.state.store, flush_interval_s=60)
        await app.state.writer.start()
        yield
        await app.state.writer.close()
        app.state.store.close()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(feedback.router)
    app.state.settings = load_settings(admin_key=ADMIN_KEY, **settings)
    return app


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    db_path = tmp_path_factory.mktemp("feedback") / "calib.db"
    # Writers give up on a locked database after 200 ms (see the store-fault test).
    app = _feedback_app(f"sqlite:///{db_path}?timeout=0.2", feedback_max_batch=50)
    server = ServerThread(app).start()
    store: Store = app.state.store
    acme, _ = store.create_key("acme-app", "client", tenant="acme")
    globex, _ = store.create_key("globex-app", "client", tenant="globex")
    yield Env(server.url, db_path, store, app, acme, globex)
    server.stop()


def _prediction(**fields: object) -> PredictionRecord:
    defaults: dict[str, object] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "model": "gemma",
        "task": "default",
        "tenant": "acme",
        "mode": "options",
        "options": ["A", "B", "C", "D"],
        "idk_option": None,
        "answer": "B",
        "raw_confidence": 0.7,
        "confidence": 0.65,
        "features": {"answer_index": 1},
    }
    defaults.update(fields)
    return PredictionRecord(**defaults)  # type: ignore[arg-type]


def _stored(env: Env, **fields: object) -> PredictionRecord:
    record = _prediction(**fields)
    env.store.insert_predictions([record])
    return record


def _error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# ------------------------------------------------------------------ the happy paths


def test_correct_feedback_is_acknowledged(env: Env) -> None:
    pred = _stored(env)
    with env.client(env.acme) as http:
        response = http.post("/v1/feedback", json={"id": pred.id, "correct": True})
    assert response.status_code == 200
    assert response.json() == {
        "object": "feedback",
        "id": pred.id,
        "correct": True,
        "label": None,
        "status": "created",
    }


def test_label_is_judged_against_the_stored_answer(env: Env) -> None:
    right, wrong = _stored(env, answer="C"), _stored(env, answer="C")
    with env.client(env.acme) as http:
        assert http.post("/v1/feedback", json={"id": right.id, "label": "(C)"}).json()["correct"]
        body = http.post("/v1/feedback", json={"id": wrong.id, "label": "A"}).json()
    assert (body["correct"], body["label"]) == (False, "A")
    stored = env.store.get_feedback(wrong.id)
    assert stored is not None and stored.true_index == 0


def test_sequence_labels_match_case_and_punctuation_insensitively(env: Env) -> None:
    pred = _stored(env, mode="sequence", options=None, answer="The Eiffel Tower, in Paris.")
    with env.client(env.acme) as http:
        body = http.post("/v1/feedback", json={"id": pred.id, "label": "the eiffel tower"}).json()
    assert body["correct"] is True


def test_idk_label_rewards_abstaining(env: Env) -> None:
    options = ["A", "B", "E"]
    abstained = _stored(env, options=options, idk_option="E", answer="A", abstained=True)
    answered = _stored(env, options=options, idk_option="E", answer="A")
    with env.client(env.acme) as http:
        batch = [{"id": abstained.id, "label": "E"}, {"id": answered.id, "label": "E"}]
        body = http.post("/v1/feedback", json=batch).json()
    assert body["object"] == "list"
    assert [item["correct"] for item in body["data"]] == [True, False]


def test_same_feedback_twice_is_unchanged(env: Env) -> None:
    pred = _stored(env)
    with env.client(env.acme) as http:
        first = http.post("/v1/feedback", json={"id": pred.id, "label": "B"})
        again = http.post("/v1/feedback", json={"id": pred.id, "label": "B"})
    assert (first.json()["status"], again.json()["status"]) == ("created", "unchanged")
    assert again.status_code == 200


def test_feedback_right_after_the_response_finds_the_pending_prediction(env: Env) -> None:
    pred = _prediction()
    env.writer.submit(pred)  # as the proxy does behind a response; not yet written
    assert env.writer.is_pending(pred.id)
    with env.client(env.acme) as http:
        response = http.post("/v1/feedback", json={"id": pred.id, "correct": False})
    assert response.status_code == 200, response.text
    assert not env.writer.is_pending(pred.id)


def test_acknowledged_feedback_is_committed(env: Env) -> None:
    pred = _stored(env)
    with env.client(env.acme) as http:
        assert http.post("/v1/feedback", json={"id": pred.id, "label": "D"}).status_code == 200
    fresh = Store.open(f"sqlite:///{env.db_path}")
    stored = fresh.get_feedback(pred.id)
    fresh.close()
    assert stored is not None
    assert (stored.correct, stored.label, stored.true_index, stored.tenant) == (
        False,
        "D",
        3,
        "acme",
    )
    assert stored.key_id is not None


def test_get_feedback_returns_what_is_stored(env: Env) -> None:
    pred = _stored(env)
    with env.client(env.acme) as http:
        http.post("/v1/feedback", json={"id": pred.id, "label": "B"})
        body = http.get(f"/v1/feedback/{pred.id}").json()
    assert body["object"] == "feedback"
    assert (body["id"], body["correct"], body["label"], body["true_index"]) == (
        pred.id,
        True,
        "B",
        1,
    )


# ------------------------------------------------------------------ the refusals


def test_unknown_id_is_404(env: Env) -> None:
    with env.client(env.acme) as http:
        error = _error(http.post("/v1/feedback", json={"id": "nope", "correct": True}), 404)
        assert error["param"] == "nope"
        _error(http.get("/v1/feedback/nope"), 404)


def test_another_tenants_prediction_is_403(env: Env) -> None:
    pred = _stored(env, tenant="acme")
    with env.client(env.globex) as http:
        error = _error(http.post("/v1/feedback", json={"id": pred.id, "correct": True}), 403)
        assert error["param"] == pred.id
    with env.client(env.acme) as http:
        http.post("/v1/feedback", json={"id": pred.id, "correct": True})
    with env.client(env.globex) as http:
        _error(http.get(f"/v1/feedback/{pred.id}"), 403)


def test_admins_may_label_any_tenants_prediction(env: Env) -> None:
    pred = _stored(env, tenant="globex")
    with env.client(ADMIN_KEY) as http:
        assert http.post("/v1/feedback", json={"id": pred.id, "correct": True}).status_code == 200
        assert http.get(f"/v1/feedback/{pred.id}").status_code == 200


def test_conflicting_label_is_409(env: Env) -> None:
    pred = _stored(env)
    with env.client(env.acme) as http:
        http.post("/v1/feedback", json={"id": pred.id, "correct": True})
        error = _error(http.post("/v1/feedback", json={"id": pred.id, "label": "A"}), 409)
    assert error["param"] == pred.id
    assert error["type"] == "conflict_error"


def test_label_that_is_not_an_option_is_422(env: Env) -> None:
    pred = _stored(env)
    with env.client(env.acme) as http:
        _error(http.post("/v1/feedback", json={"id": pred.id, "label": "Z"}), 422)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "correct": True, "label": "A"},
        {"id": "x"},
        {"correct": True},
        {"id": "x", "correct": "yes"},
        {"id": "x", "correct": 1},
        {"id": "", "correct": True},
        {"id": "x", "label": ""},
        {"id": "x", "correct": True, "extra": 1},
        [],
        "just a string",
        [{"id": "x", "correct": True}, {"id": "y"}],
        [{"id": f"id-{i}", "correct": True} for i in range(51)],
    ],
)
def test_malformed_feedback_is_422(env: Env, body: object) -> None:
    with env.client(env.acme) as http:
        error = _error(http.post("/v1/feedback", json=body), 422)
    assert error["type"] == "invalid_request_error"


def test_malformed_batch_item_names_its_position(env: Env) -> None:
    with env.client(env.acme) as http:
        body = [{"id": "x", "correct": True}, {"id": "y"}]
        error = _error(http.post("/v1/feedback", json=body), 422)
    assert error["param"] == "[1]"
    assert "exactly one" in str(error["message"])


def test_invalid_json_is_400(env: Env) -> None:
    with env.client(env.acme) as http:
        response = http.post(
            "/v1/feedback", content=b"{not json", headers={"content-type": "application/json"}
        )
    _error(response, 400)


def test_missing_key_is_401(env: Env) -> None:
    with env.client(None) as http:
        _error(http.post("/v1/feedback", json={"id": "x", "correct": True}), 401)


def test_a_batch_with_one_bad_item_stores_nothing(env: Env) -> None:
    good, other = _stored(env), _stored(env)
    batch = [
        {"id": good.id, "correct": True},
        {"id": "no-such-id", "correct": True},
        {"id": other.id, "label": "A"},
    ]
    with env.client(env.acme) as http:
        error = _error(http.post("/v1/feedback", json=batch), 404)
        assert error["param"] == "no-such-id"
        assert http.get(f"/v1/feedback/{good.id}").status_code == 404
        assert http.get(f"/v1/feedback/{other.id}").status_code == 404


def test_store_fault_is_503_and_never_a_false_ack(env: Env) -> None:
    pred = _stored(env)
    locker = sqlite3.connect(env.db_path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        with env.client(env.acme) as http:
            response = http.post("/v1/feedback", json={"id": pred.id, "correct": True})
        error = _error(response, 503)
        assert response.headers["retry-after"] == "1"
        assert error["type"] == "service_unavailable_error"
        locker.execute("ROLLBACK")
    finally:
        locker.close()
    assert env.store.get_feedback(pred.id) is None
    with env.client(env.acme) as http:  # the client retries and succeeds
        response = http.post("/v1/feedback", json={"id": pred.id, "correct": True})
    assert response.json()["status"] == "created"


# ------------------------------------------------------------------ end to end


def test_feedback_through_the_gateway(client: httpx.Client, double) -> None:  # type: ignore[no-untyped-def]
    """Ask the real gateway (`create_app`), then label its answer at once."""
    response = client.post(
        "/v1/chat/completions",
        json={"model": "mcq", "messages": [{"role": "user", "content": "Pick one."}]},
    )
    assert response.status_code == 200, response.text
    calibration = response.json()["calibration"]
    answer = calibration.get("answer")
    label = answer if answer else "A"
    posted = client.post("/v1/feedback", json={"id": calibration["id"], "label": label})
    assert posted.status_code == 200, posted.text
    assert posted.json()["status"] == "created"
    stored = client.get(f"/v1/feedback/{calibration['id']}").json()
    assert stored["label"] == label
