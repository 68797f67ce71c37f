"""The visual-reliance probe on the real tiny VLM (vLLM CPU), through the gateway.

Real: the perturbed image goes through vLLM's LLaVA processor and vision tower; options mode
reads the perturbed option distribution off the engine's top-20 logprobs; sequence mode scores
the generated answer under the blank image with vLLM's prompt logprobs (the answer appended as
the assistant's turn, `continue_final_message`).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from statistics import fmean

import httpx
import pytest
from PIL import Image

from service.datasets.vision import SIZE, VisionQuestion, build_vision_set
from service.proxy._perturb import GREY
from tests.integration.conftest import ENGINE_TEST_TIMEOUT_S, RunningEngine, gateway_client

pytestmark = [pytest.mark.engine, pytest.mark.timeout(ENGINE_TEST_TIMEOUT_S)]


@pytest.fixture(scope="module")
def gw(vlm_engine: RunningEngine, tmp_path_factory) -> Iterator[httpx.Client]:
    db = tmp_path_factory.mktemp("gw-vlm-probe") / "calib.db"
    with gateway_client(vlm_engine.base_url, db) as client:
        yield client


def _uniform(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), colour).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _ask(gw: httpx.Client, q: VisionQuestion, **calibration: object) -> dict:
    body = {
        "model": "tiny-vlm",
        "messages": q.messages,
        "max_tokens": 1,
        "temperature": 0,
        "calibration": {"options": q.options, "idk_option": q.idk_option, **calibration},
    }
    r = gw.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["calibration"]


def test_real_images_are_relied_on_and_an_already_blank_image_is_not(gw: httpx.Client) -> None:
    """A grey image blanked to grey is the same input: reliance ~0 (the probe compares like with
    like). Real pictures move the answer when blanked."""
    questions = [q for q in build_vision_set(seed=5151, n=8) if q.difficulty == 0 and q.answerable]
    real, blank = [], []
    for q in questions:
        cal = _ask(gw, q, visual_probe=True)
        probe = cal["visual_probe"]
        assert probe["status"] == "done", probe
        assert probe["perturbation"] == "blank" and probe["images"] == 1
        assert 0.0 <= cal["visual_reliance"] <= 1.0
        real.append(cal["visual_reliance"])
        grey = _ask(gw, q.with_image(_uniform(GREY)), visual_probe=True)
        blank.append(grey["visual_reliance"])
    assert max(blank) < 0.02
    assert fmean(real) > 0.1 + fmean(blank)


@pytest.mark.parametrize("perturbation", ["noise", "blur"])
def test_other_perturbations_reach_the_engine(gw: httpx.Client, perturbation: str) -> None:
    q = build_vision_set(seed=5152, n=1)[0]
    cal = _ask(gw, q, visual_probe=perturbation)
    assert cal["visual_probe"]["status"] == "done", cal["visual_probe"]
    assert 0.0 <= cal["visual_reliance"] <= 1.0


def test_sequence_mode_scores_the_answer_under_the_blank_image(gw: httpx.Client) -> None:
    q = build_vision_set(seed=5153, n=1, families=("colour",))[0]
    body = {
        "model": "tiny-vlm",
        "messages": q.messages,
        "max_tokens": 4,
        "temperature": 0,
        "calibration": {"mode": "sequence", "visual_probe": True},
    }
    r = gw.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    assert cal["mode"] == "sequence"
    assert cal["visual_probe"]["status"] == "done", cal["visual_probe"]
    assert 0.0 <= cal["visual_reliance"] <= 1.0
    assert 0.0 < cal["visual_probe"]["perturbed_confidence"] <= 1.0
