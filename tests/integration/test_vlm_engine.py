"""Images through the gateway to a real VLM: the tiny LLaVA on vLLM CPU (`--model tiny-vlm`).

The whole multimodal path is real: image part -> gateway validation -> vLLM's LLaVA processor
(CLIP image processor, 16 image tokens) -> the trained vision tower -> Gemma 3 270M -> logprobs ->
the gateway's option scoring. Asserted: every common image format works, the answer follows the
picture, logprobs and calibration come back, bad images are a clear 4xx from the gateway, an image
sent to the text-only model is the engine's own error in OpenAI's shape, and labeled vision answers
feed a refit.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from service.datasets.vision import VisionQuestion, build_vision_set, draw_scene, png_data_url
from tests.conftest import MAX_BODY_BYTES, start_gateway
from tests.integration.conftest import ENGINE_TEST_TIMEOUT_S, RunningEngine, gateway_client

pytestmark = [pytest.mark.engine, pytest.mark.timeout(ENGINE_TEST_TIMEOUT_S)]

TASK = "vision-it"


@pytest.fixture(scope="module")
def gw(vlm_engine: RunningEngine, tmp_path_factory) -> Iterator[httpx.Client]:
    db = tmp_path_factory.mktemp("gw-vlm") / "calib.db"
    with gateway_client(vlm_engine.base_url, db) as client:
        yield client


@pytest.fixture(scope="module")
def questions() -> list[VisionQuestion]:
    return build_vision_set(seed=4242, n=16)


def _encode(url: str, fmt: str) -> str:
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=95) if fmt != "PNG" else image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def _ask(gw: httpx.Client, q: VisionQuestion, task: str = TASK, **extra: object) -> httpx.Response:
    body = {
        "model": "tiny-vlm",
        "messages": q.messages,
        "max_tokens": 1,
        "temperature": 0,
        "calibration": {"options": q.options, "idk_option": q.idk_option, "task": task},
        **extra,
    }
    return gw.post("/v1/chat/completions", json=body)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_image_formats_reach_the_model(gw: httpx.Client, questions, fmt: str) -> None:
    q = next(q for q in questions if q.family == "colour" and q.difficulty == 0 and q.answerable)
    asked = q.with_image(_encode(q.image_url, fmt))
    r = _ask(gw, asked)
    assert r.status_code == 200, r.text
    body = r.json()
    cal = body["calibration"]
    assert cal["mode"] == "options"
    assert cal["answer"] == q.answer, (fmt, body["choices"][0]["message"])
    assert sum(cal["option_probs"].values()) == pytest.approx(1.0)
    assert 0.0 < cal["raw_confidence"] <= 1.0
    assert body["usage"]["prompt_tokens"] > 16  # the 16 image tokens are in the prompt


#: Clean pictures of each family's four values that must get their own letter. Count gets one
#: miss: its crowded large shapes are the model's weakest cell (docs/engine.md).
_FOLLOWS = {"colour": 4, "shape": 4, "count": 3, "position": 4}


@pytest.mark.parametrize("family", list(_FOLLOWS))
def test_the_answer_follows_the_picture(gw: httpx.Client, questions, family: str) -> None:
    """Same question text, clean pictures of the family's four values: their four letters."""
    rng = random.Random(f"follow:{family}")
    template = next(q for q in questions if q.family == family)
    answers = {}
    for _ in range(60):
        scene = draw_scene(family, 0, rng)
        assert scene.answer_index is not None
        if scene.answer_index in answers:
            continue
        r = _ask(gw, template.with_image(png_data_url(scene.image)))
        assert r.status_code == 200, r.text
        answers[scene.answer_index] = r.json()["calibration"]["answer"]
        if len(answers) == 4:
            break
    right = sum(answers[i] == "ABCD"[i] for i in answers)
    assert len(answers) == 4 and right >= _FOLLOWS[family], (family, answers)


def test_accuracy_and_confidence_fall_with_difficulty(gw: httpx.Client) -> None:
    """Held-out pictures (a seed training never draws): nearly always right on clean pictures,
    much less on the hardest, and the raw confidence says so (docs/engine.md has the full table)."""
    asked = build_vision_set(seed=5151, n=24, difficulties=(0, 3))
    right: dict[int, list[bool]] = {0: [], 3: []}
    confidence: dict[int, list[float]] = {0: [], 3: []}
    for q in asked:
        r = _ask(gw, q)
        assert r.status_code == 200, r.text
        cal = r.json()["calibration"]
        right[q.difficulty].append(cal["answer"] == q.answer)
        confidence[q.difficulty].append(cal["raw_confidence"])
    accuracy = {d: sum(v) / len(v) for d, v in right.items()}
    mean_conf = {d: sum(v) / len(v) for d, v in confidence.items()}
    assert accuracy[0] >= 0.85, accuracy
    assert accuracy[3] <= accuracy[0] - 0.3, accuracy
    assert mean_conf[3] < mean_conf[0], mean_conf


def test_logprobs_and_calibration_together(gw: httpx.Client, questions) -> None:
    q = questions[1]
    r = _ask(gw, q, logprobs=True, top_logprobs=3)
    assert r.status_code == 200, r.text
    body = r.json()
    steps = body["choices"][0]["logprobs"]["content"]
    assert steps and all(len(step["top_logprobs"]) == 3 for step in steps)
    assert body["calibration"]["confidence"] is not None


def test_malformed_image_is_a_clear_400(gw: httpx.Client, questions) -> None:
    q = questions[0].with_image("data:image/png;base64,@@not-base64@@")
    r = _ask(gw, q)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_image_url"
    assert error["param"] == "messages[0].content[0].image_url"


def test_oversized_image_is_a_413(gw: httpx.Client, questions) -> None:
    big = Image.effect_noise((900, 900), 100).convert("RGB")
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    assert len(url) > MAX_BODY_BYTES
    r = _ask(gw, questions[0].with_image(url))
    assert r.status_code == 413
    assert r.json()["error"]["message"]


def test_image_to_a_text_only_model_is_the_engines_error(
    engine: RunningEngine, tmp_path_factory, questions
) -> None:
    gateway = start_gateway(engine.base_url, tmp_path_factory.mktemp("gw-text") / "calib.db")
    try:
        body = {"model": engine.model, "messages": questions[0].messages, "max_tokens": 1}
        direct = httpx.post(f"{engine.base_url}/chat/completions", json=body, timeout=120)
        via = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=120)
    finally:
        gateway.server.stop()
    assert 400 <= direct.status_code < 500, direct.text
    assert via.status_code == direct.status_code
    error = via.json()["error"]
    assert error["message"] == direct.json()["error"]["message"]
    assert "image" in error["message"].lower() or "multimodal" in error["message"].lower()


def test_feedback_and_refit_on_the_vision_task(gw: httpx.Client) -> None:
    items = build_vision_set(seed=5151, n=15)  # 60 questions, all difficulties
    for q in items:
        r = _ask(gw, q, task="vision-refit")
        assert r.status_code == 200, r.text
        cal = r.json()["calibration"]
        fb = gw.post("/v1/feedback", json={"id": cal["id"], "label": q.answer})
        assert fb.status_code == 200, fb.text
        assert fb.json()["correct"] is (cal["answer"] == q.answer)
    r = gw.post("/v1/calibration/models/tiny-vlm/refit", params={"task": "vision-refit"})
    assert r.status_code == 200, r.text
    outcome = r.json()
    assert outcome["n_labels"] == len(items)
    assert outcome["status"] in ("activated", "rejected"), outcome
    if outcome["activated"]:
        after = _ask(gw, items[0], task="vision-refit").json()["calibration"]
        assert after["profile_version"] == outcome["version"]
        assert after["method"] != "none"


def test_torchvision_imports_through_the_shim(vlm_engine: RunningEngine) -> None:
    """The engine venv's torchvision is PyPI's CUDA wheel: it imports only thanks to the shim,
    which defines the two operator schemas its extension would have registered."""
    import subprocess

    from service.engine import EngineLayout
    from service.engine.vlm.prepare import torchvision_ready

    layout = EngineLayout.default()
    if not torchvision_ready(layout):
        pytest.skip("the tiny VLM under test was not prepared in this data directory")
    code = (
        "import sys, torchvision, torch\n"
        "from torchvision.transforms import v2\n"
        "assert 'calib_torchvision_shim' in sys.modules\n"
        "print(torch.ops.torchvision.nms.default._schema)\n"
    )
    out = subprocess.run(
        [str(layout.venv_python), "-c", code], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torchvision::nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor" in (
        out.stdout
    )
