"""The input-shift gauge on the real tiny VLM: real images through the gateway to vLLM.

Clean pictures (difficulty 0) are answered by the VLM and labeled; a manual profile edit makes a
version whose reference is their inputs. Fresh clean pictures are then not flagged; heavily
noised ones (difficulty 3) are, for the image modality only (the question text is the same).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from service.datasets.vision import VisionQuestion, build_vision_set
from tests.conftest import Gateway, start_gateway
from tests.integration.conftest import ENGINE_TEST_TIMEOUT_S, RunningEngine

pytestmark = [pytest.mark.engine, pytest.mark.timeout(ENGINE_TEST_TIMEOUT_S)]

TASK = "vision-shift-it"
WINDOW = 30


@pytest.fixture(scope="module")
def gw(vlm_engine: RunningEngine, tmp_path_factory) -> Iterator[Gateway]:
    gateway = start_gateway(
        vlm_engine.base_url,
        tmp_path_factory.mktemp("gw-vlm-shift") / "calib.db",
        upstream_timeout_s=300.0,
        refit_enabled=False,
        shift_window=WINDOW,
        shift_permutations=199,
    )
    yield gateway
    gateway.server.stop()


def _set(seed: int, n: int, difficulty: int) -> list[VisionQuestion]:
    return build_vision_set(seed=seed, n=n, families=("colour",), difficulties=(difficulty,))


def _ask_all(client: httpx.Client, questions: list[VisionQuestion]) -> list[str]:
    ids = []
    for q in questions:
        body = {
            "model": "tiny-vlm",
            "messages": q.messages,
            "max_tokens": 1,
            "temperature": 0,
            "calibration": {"options": q.options, "idk_option": q.idk_option, "task": TASK},
        }
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        ids.append(r.json()["calibration"]["id"])
    return ids


def _report(client: httpx.Client, gw: Gateway) -> dict:
    writer = gw.app.state.writer
    deadline = time.monotonic() + 30
    while writer.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    r = client.get("/v1/calibration/models/tiny-vlm/shift", params={"task": TASK})
    assert r.status_code == 200, r.text
    return r.json()


def test_noisy_pictures_are_flagged_clean_ones_are_not(gw: Gateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=300) as client:
        reference = _set(6100, 40, 0)
        ids = _ask_all(client, reference)
        items = [{"id": i, "label": q.answer} for i, q in zip(ids, reference, strict=True)]
        assert client.post("/v1/feedback", json=items).status_code == 200
        r = client.put(
            "/v1/calibration/models/tiny-vlm/profile", json={"task": TASK, "threshold": 0.2}
        )
        assert r.status_code == 200, r.text
        version = r.json()["version"]

        _ask_all(client, _set(6200, WINDOW, 0))
        clean = _report(client, gw)
        assert clean["profile_version"] == version
        assert clean["reference"] == 40 and clean["window"] == WINDOW
        assert clean["modalities"]["image"]["shifted"] is False, clean

        _ask_all(client, _set(6300, WINDOW, 3))
        noisy = _report(client, gw)
        image = noisy["modalities"]["image"]
        assert image["shifted"] is True and image["score"] > image["threshold"], noisy
        assert noisy["modalities"]["text"]["shifted"] is False

        stored = gw.app.state.store.get_prediction(ids[0])
        assert stored is not None and len(stored.features["input_embedding_image"]) == 30
