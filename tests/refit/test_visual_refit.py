"""Refit with the visual-reliance signal: the two-feature logistic calibrator wins when reliance
says something the confidence does not, and is then served with the probe's signal.

The double's VLM is equally confident in every answer (p(A) ≈ 0.95 with a picture), but how far
the blank image moves that distribution varies per question (`bias=` in the question text sets
p(A) under a blank image). Correctness follows the reliance: answers that barely depend on the
image are mostly wrong. Confidence alone cannot tell them apart; confidence + reliance can.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Gateway
from tests.refit.helpers import refit_client, start_refit_gateway
from tests.upstream_double import UpstreamDouble, vision_reply

OPTIONS = ["A", "B", "C", "D"]
_BIAS = re.compile(r"bias=([0-9.]+)")


def _picture() -> str:
    image = Image.new("RGB", (16, 16), (240, 240, 240))
    image.paste((200, 20, 20), (4, 4, 12, 12))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _blank_probs(body: dict) -> list[float]:
    text = body["messages"][0]["content"][1]["text"]
    bias = float(_BIAS.search(text).group(1))  # type: ignore[union-attr]
    return [bias, *([(1 - bias) / 3] * 3)]


@pytest.fixture(scope="module")
def probe_refit_gateway(upstream_double: UpstreamDouble, tmp_path_factory) -> Iterator[Gateway]:
    models = {"vlm": {"options": OPTIONS, "visual_probe": {"enabled": True}}}
    gw = start_refit_gateway(
        upstream_double.base_url, tmp_path_factory, "visual-refit", models=models
    )
    yield gw
    gw.server.stop()


@pytest.fixture
def api(probe_refit_gateway: Gateway, double: UpstreamDouble) -> Iterator[httpx.Client]:
    with refit_client(probe_refit_gateway) as client:
        yield client


def _ask(api: httpx.Client, bias: float, task: str) -> dict:
    body = {
        "model": "vlm",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _picture()}},
                    {"type": "text", "text": f"Which colour? bias={bias:.4f}"},
                ],
            }
        ],
        "calibration": {"task": task},
    }
    response = api.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["calibration"]


def test_refit_keeps_the_two_feature_calibrator_when_reliance_is_informative(api, double):
    double.reply = vision_reply(blank=_blank_probs)
    task = "visual-refit"
    rng = np.random.default_rng(17)
    cals, correct = [], []
    for bias in rng.uniform(0.25, 0.95, size=300):
        cal = _ask(api, float(bias), task)
        reliance = cal["visual_reliance"]
        assert reliance is not None
        cals.append(cal)
        correct.append(bool(rng.random() < 0.15 + 0.8 * reliance / 0.7))
    raws = {round(c["raw_confidence"], 9) for c in cals}
    assert len(raws) == 1  # the confidence alone carries nothing
    feedback = [{"id": c["id"], "correct": ok} for c, ok in zip(cals, correct, strict=True)]
    assert api.post("/v1/feedback", json=feedback).status_code == 200

    response = api.post("/v1/calibration/models/vlm/refit", params={"task": task})
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["status"] == "activated", outcome
    assert outcome["method"] == "logistic"
    assert outcome["metrics"]["chosen"] == "logistic:confidence_logit+visual_reliance"

    # Served: the same raw confidence, calibrated by how much the answer relies on the image.
    ignores, relies = _ask(api, 0.94, task), _ask(api, 0.26, task)
    assert ignores["raw_confidence"] == pytest.approx(relies["raw_confidence"])
    assert ignores["method"] == relies["method"] == "logistic"
    assert ignores["visual_reliance"] < 0.05 < 0.6 < relies["visual_reliance"]
    assert ignores["confidence"] < 0.35 < 0.75 < relies["confidence"]
