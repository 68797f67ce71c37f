"""The input-shift gauge through the real gateway: image requests to the controllable upstream.

Real parts: the gateway (uvicorn), its SQLite store, the prediction writer that embeds inputs on
its thread, the shift route and `/metrics`. Images are the vision set's own pictures: clean ones
(difficulty 0) form the reference; heavily noised, low-contrast ones (difficulty 3) are the shift.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import httpx
import pytest

from service.datasets.vision import draw_scene, png_data_url, question_text
from tests.conftest import Gateway, start_gateway
from tests.upstream_double import JSONReply, UpstreamDouble, chat_response

TASK = "shift-api"
N = 60
STEPS = [("B", -0.5, [("B", -0.5), ("A", -1.5), ("C", -2.5), ("D", -3.5)])]


@pytest.fixture(scope="module")
def shift_gateway(upstream_double: UpstreamDouble, tmp_path_factory) -> Iterator[Gateway]:
    gw = start_gateway(
        upstream_double.base_url,
        tmp_path_factory.mktemp("shift") / "calib.db",
        refit_enabled=False,
        shift_window=N,
        shift_reference_size=N,
        shift_permutations=199,
    )
    yield gw
    gw.server.stop()


@pytest.fixture
def api(shift_gateway: Gateway, double: UpstreamDouble) -> Iterator[httpx.Client]:
    double.reply = lambda path, body: JSONReply(chat_response(STEPS))
    with httpx.Client(base_url=shift_gateway.url, timeout=30.0) as client:
        yield client


def _images(difficulty: int, seed: int, n: int = N) -> list[str]:
    rng = random.Random(seed)
    return [png_data_url(draw_scene("colour", difficulty, rng).image) for _ in range(n)]


def _ask(api: httpx.Client, url: str, task: str = TASK) -> str:
    body = {
        "model": "mcq",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": question_text("colour")},
                ],
            }
        ],
        "max_tokens": 1,
        "calibration": {"task": task},
    }
    r = api.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["calibration"]["id"]


def _settle(gw: Gateway) -> None:
    """Wait until the writer stored (and so embedded) every prediction sent so far."""
    writer = gw.app.state.writer
    deadline = time.monotonic() + 15
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.pending == 0


def _shift(api: httpx.Client, gw: Gateway, task: str = TASK) -> dict:
    """The shift report once everything sent is embedded."""
    _settle(gw)
    r = api.get("/v1/calibration/models/mcq/shift", params={"task": task})
    assert r.status_code == 200, r.text
    return r.json()


def _label_all(api: httpx.Client, ids: list[str]) -> None:
    r = api.post("/v1/feedback", json=[{"id": i, "correct": True} for i in ids])
    assert r.status_code == 200, r.text


def _new_version(api: httpx.Client, threshold: float) -> int:
    r = api.put("/v1/calibration/models/mcq/profile", json={"task": TASK, "threshold": threshold})
    assert r.status_code == 200, r.text
    return r.json()["version"]


def test_a_shift_of_the_images_is_flagged_and_a_new_profile_replaces_the_reference(
    api: httpx.Client, shift_gateway: Gateway
) -> None:
    gw = shift_gateway
    base = [_ask(api, url) for url in _images(0, seed=1)]
    _label_all(api, base)
    # Served with the identity profile: a window but nothing to compare it with.
    before = _shift(api, gw)
    assert before["reference"] == 0 and before["modalities"] == {}

    version = _new_version(api, 0.1)  # a manual edit: its reference is the labeled inputs so far
    [_ask(api, url) for url in _images(0, seed=2)]  # fresh pictures of the same distribution
    same = _shift(api, gw)
    assert same["profile_version"] == version and same["window"] == N
    assert same["reference"] == N
    assert set(same["modalities"]) == {"image", "text"}
    image = same["modalities"]["image"]
    assert image["shifted"] is False and image["score"] <= image["threshold"]
    assert same["modalities"]["text"]["shifted"] is False

    shifted_ids = [_ask(api, url) for url in _images(3, seed=3)]  # noise, blur, low contrast
    moved = _shift(api, gw)
    image = moved["modalities"]["image"]
    assert image["shifted"] is True and image["score"] > image["threshold"], moved
    assert image["p_value"] <= 0.01
    assert moved["modalities"]["text"]["shifted"] is False  # the question text did not move

    # The shifted inputs get labels and a new version is made: its reference is their window.
    _label_all(api, shifted_ids)
    newer = _new_version(api, 0.2)
    [_ask(api, url) for url in _images(3, seed=4)]
    after = _shift(api, gw)
    assert after["profile_version"] == newer and after["reference"] == N
    assert after["modalities"]["image"]["shifted"] is False, after

    # A rollback re-activates the first version, and with it the clean reference.
    r = api.post("/v1/calibration/models/mcq/rollback", json={"task": TASK, "version": version})
    assert r.status_code == 200, r.text
    [_ask(api, url) for url in _images(3, seed=5, n=5)]
    back = _shift(api, gw)
    assert back["profile_version"] == version
    assert back["modalities"]["image"]["shifted"] is True, back


def test_embeddings_are_stored_with_the_prediction(
    api: httpx.Client, shift_gateway: Gateway
) -> None:
    cid = _ask(api, _images(0, seed=9, n=1)[0], task="shift-stored")
    store = shift_gateway.app.state.store
    deadline = time.monotonic() + 10
    while (found := store.get_prediction(cid)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert found is not None
    assert len(found.features["input_embedding_image"]) == 30
    assert len(found.features["input_embedding_text"]) == 64
    assert "option_logprobs" in found.features  # the existing keys are untouched


def test_text_only_requests_have_only_a_text_modality(
    api: httpx.Client, shift_gateway: Gateway
) -> None:
    task = "shift-text"
    for i in range(25):
        body = {
            "model": "mcq",
            "messages": [{"role": "user", "content": f"Question {i}: A, B, C or D?"}],
            "calibration": {"task": task},
        }
        assert api.post("/v1/chat/completions", json=body).status_code == 200
    report = _shift(api, shift_gateway, task=task)
    assert report["window"] == 25 and report["reference"] == 0
    assert report["modalities"] == {}  # no profile: no reference to compare with


def test_undecodable_image_is_skipped_not_an_error(
    api: httpx.Client, shift_gateway: Gateway
) -> None:
    import base64

    junk = "data:image/png;base64," + base64.b64encode(b"\x89PNG not really").decode()
    _ask(api, junk, task="shift-junk")
    report = _shift(api, shift_gateway, task="shift-junk")
    assert report["window"] == 1  # counted through its text; the image had no embedding


def test_unknown_model_or_bad_task_is_a_clear_error(api: httpx.Client) -> None:
    r = api.get("/v1/calibration/models/no-such-model/shift", params={"task": "x"})
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "model_not_found" and "no-such-model" in error["message"]
    r = api.get("/v1/calibration/models/mcq/shift", params={"task": "bad task!"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "task"


def test_gauges_on_metrics(api: httpx.Client, shift_gateway: Gateway) -> None:
    _shift(api, shift_gateway)  # the first test left a compared window for (mcq, shift-api)
    text = api.get("/metrics").text
    for name in ("calib_input_shift_score", "calib_input_shift_threshold"):
        lines = [line for line in text.splitlines() if line.startswith(name + "{")]
        wanted = ('model="mcq"', 'modality="image"', f'task="{TASK}"')
        assert any(all(w in line for w in wanted) for line in lines), (name, lines)
