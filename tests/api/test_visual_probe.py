"""The visual-reliance probe through a real gateway, against the image-aware upstream double.

The double (`vision_reply`) answers like a VLM: a picture gives a confident "A", a uniform grey
image a flat distribution over A–D; answers scored under a grey image get lower prompt logprobs.
Every test runs twice: through the ASGI fast path and through the FastAPI routes alone.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from service.proxy import ProxyFastPath
from tests.conftest import UPSTREAM_TIMEOUT_S, start_gateway
from tests.upstream_double import (
    Await,
    JSONReply,
    ServerThread,
    Stall,
    UpstreamDouble,
    chat_response,
    image_kind,
    vision_reply,
)

OPTIONS = ["A", "B", "C", "D"]
MODELS = {
    "vlm": {"options": OPTIONS, "visual_probe": {"enabled": True}},
    "vlm-off": {"options": OPTIONS},
    "vlm-seq": {"mode": "sequence", "visual_probe": {"enabled": True}},
    "vlm-blur": {"options": OPTIONS, "visual_probe": {"enabled": True, "perturbation": "blur"}},
    "vlm-quick": {"options": OPTIONS, "visual_probe": {"enabled": True, "timeout_s": 0.3}},
    "vlm-never": {"options": OPTIONS, "visual_probe": {"enabled": True, "sample_rate": 0.0}},
    "vlm-likelihood": {
        "options": OPTIONS,
        "scoring": "likelihood",
        "visual_probe": {"enabled": True},
    },
}


def picture(colour: tuple[int, int, int] = (200, 30, 30), size: int = 32) -> str:
    image = Image.new("RGB", (size, size), (240, 240, 240))
    for x in range(size // 4, 3 * size // 4):
        for y in range(size // 4, 3 * size // 4):
            image.putpixel((x, y), colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def grey() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def messages(url: str | None = None, text: str = "What colour is the shape? A, B, C or D.") -> list:
    parts: list = [{"type": "text", "text": text}]
    if url is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return [{"role": "user", "content": parts}]


@dataclass
class ProbeGateway:
    url: str
    app: Any


@pytest.fixture(scope="module", params=["fast_path", "routes"])
def probe_gateway(
    request, upstream_double: UpstreamDouble, tmp_path_factory
) -> Iterator[ProbeGateway]:
    db = tmp_path_factory.mktemp("probe") / "calib.db"
    gw = start_gateway(upstream_double.base_url, db, models=MODELS, refit_enabled=False)
    server, app = gw.server, gw.app
    if request.param == "routes":  # the same app without the fast path: FastAPI serves
        gw.server.stop()
        from service.app import create_app
        from service.settings import load_settings

        app = create_app(
            load_settings(
                upstream=upstream_double.base_url,
                db=f"sqlite:///{db}",
                data_dir=db.parent,
                upstream_timeout_s=UPSTREAM_TIMEOUT_S,
                models=MODELS,
                refit_enabled=False,
                upstream_models_refresh_s=3600.0,
            )
        )
        app.user_middleware = [m for m in app.user_middleware if m.cls is not ProxyFastPath]
        server = ServerThread(app).start()
    yield ProbeGateway(server.url, app)
    server.stop()


@pytest.fixture
def api(probe_gateway: ProbeGateway, double: UpstreamDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=probe_gateway.url, timeout=30.0) as client:
        yield client


def ask(api: httpx.Client, model: str = "vlm", url: str | None = None, **calibration):
    body = {
        "model": model,
        "messages": messages(picture() if url is None else url),
        "max_tokens": 1,
        "calibration": calibration or None,
    }
    return api.post("/v1/chat/completions", json=body)


def kinds(double: UpstreamDouble) -> list[str | None]:
    return [image_kind(r.json) for r in double.requests if r.method == "POST"]


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


# ----------------------------------------------------------------------------- options mode


def test_options_mode_reliance_is_the_total_variation_to_the_blank_answer(api, double):
    double.reply = vision_reply()
    r = ask(api)
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    p = softmax([-0.1, -4.1, -4.1, -4.1])
    expected = 0.5 * sum(abs(x - 0.25) for x in p)
    assert cal["visual_reliance"] == pytest.approx(expected, abs=1e-9)
    assert cal["visual_probe"] == {
        "perturbation": "blank",
        "status": "done",
        "images": 1,
        "perturbed_answer": "A",
        "perturbed_confidence": pytest.approx(0.25),
    }
    assert sorted(kinds(double), key=str) == ["picture", "uniform"]
    probe = next(r.json for r in double.requests if image_kind(r.json) == "uniform")
    main = next(r.json for r in double.requests if image_kind(r.json) == "picture")
    # the same question, only the image differs (and the probe is one deterministic answer)
    assert probe["messages"][0]["content"][1] == main["messages"][0]["content"][1]
    assert probe["temperature"] == 0 and "stream" not in probe
    assert probe["max_tokens"] == 1  # the client's (capped at 32 for long replies)
    assert probe["top_logprobs"] == main["top_logprobs"]


def test_an_image_the_answer_ignores_has_zero_reliance(api, double):
    double.reply = vision_reply()
    cal = ask(api, url=grey()).json()["calibration"]  # the client's own image is already blank
    assert cal["visual_reliance"] == pytest.approx(0.0, abs=1e-12)
    assert cal["visual_probe"]["status"] == "done"


def test_the_probe_request_is_in_flight_before_the_answer_returns(api, double):
    """The main request is answered only once the probe's request has reached the upstream: a
    gateway that sent the probe after the answer would make the double wait out its timeout."""
    answer = vision_reply()

    def reply(path: str, body: dict):
        if image_kind(body) == "picture":
            seen = lambda requests: any(image_kind(r.json) == "uniform" for r in requests)  # noqa: E731
            return Await(seen, answer(path, body), timeout=2.0)
        return answer(path, body)

    double.reply = reply
    r = ask(api)
    assert r.status_code == 200
    assert double.await_timeouts == 0
    assert r.json()["calibration"]["visual_probe"]["status"] == "done"


@pytest.mark.parametrize("perturbation", ["noise", "blur"])
def test_request_names_the_perturbation(api, double, perturbation):
    double.reply = vision_reply()
    cal = ask(api, visual_probe=perturbation).json()["calibration"]
    assert cal["visual_probe"]["perturbation"] == perturbation
    assert cal["visual_probe"]["status"] == "done"
    probe = [r for r in double.requests if r.json["messages"][0]["content"][0]["image_url"]["url"]
             != picture()]  # fmt: skip
    assert len(probe) == 1
    # noise and blur keep a (non-uniform) picture: the double answers as for a picture
    assert cal["visual_reliance"] == pytest.approx(0.0, abs=1e-9)


def test_model_perturbation_from_config(api, double):
    double.reply = vision_reply()
    cal = ask(api, model="vlm-blur").json()["calibration"]
    assert cal["visual_probe"]["perturbation"] == "blur"


def test_likelihood_scoring_probes_with_likelihoods(api, double):
    def reply(path: str, body: dict):
        if "prompt_logprobs" in body:  # one request per option; the blank image levels them
            option = body["messages"][-1]["content"]
            lp = -1.0 if image_kind(body) == "uniform" else (-0.2 if option == "A" else -3.0)
            entries = [None, {"5": {"logprob": lp, "rank": 1, "decoded_token": option}}]
            return JSONReply(chat_response(None, content="\n", extra={"prompt_logprobs": entries}))
        return vision_reply()(path, body)

    double.reply = reply
    cal = ask(api, model="vlm-likelihood").json()["calibration"]
    assert cal["scoring"] == "likelihood"
    p = softmax([-0.2, -3.0, -3.0, -3.0])
    assert cal["visual_reliance"] == pytest.approx(0.5 * sum(abs(x - 0.25) for x in p))
    assert cal["visual_probe"]["perturbed_confidence"] == pytest.approx(0.25)


# ---------------------------------------------------------------------------- sequence mode


def test_sequence_mode_scores_the_answer_under_the_blank_image(api, double):
    double.reply = vision_reply(answer="A")
    r = ask(api, model="vlm-seq")
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    assert cal["mode"] == "sequence"
    # the answer's per-token probability: exp(-0.1) with the picture, exp(-2.0) without it
    assert cal["visual_reliance"] == pytest.approx(1 - math.exp(-2.0) / math.exp(-0.1))
    assert cal["visual_probe"]["perturbed_confidence"] == pytest.approx(math.exp(-2.0))
    main, probe = [r.json for r in double.requests]  # the probe follows the answer
    assert image_kind(main) == "picture" and image_kind(probe) == "uniform"
    assert probe["messages"][-1] == {"role": "assistant", "content": "A"}
    assert probe["continue_final_message"] is True and probe["prompt_logprobs"] == 0


def test_sequence_mode_streaming_carries_the_probe_on_the_final_chunk(api, double):
    double.reply = vision_reply(answer="A")
    body = {"model": "vlm-seq", "messages": messages(picture()), "stream": True}
    with api.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert final["calibration"]["visual_probe"]["status"] == "done"
    assert final["calibration"]["visual_reliance"] == pytest.approx(1 - math.exp(-1.9))


def test_options_mode_streaming(api, double):
    double.reply = vision_reply()
    body = {"model": "vlm", "messages": messages(picture()), "stream": True}
    with api.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: {")]  # fmt: skip
    finish = next(e for e in events if e["choices"] and e["choices"][0].get("finish_reason"))
    assert finish["choices"][0]["calibration"]["visual_probe"]["status"] == "done"
    assert events[-1]["calibration"]["visual_reliance"] > 0.5


# ------------------------------------------------------------------------ opt-in and skips


def test_not_asked_means_no_probe_and_no_fields(api, double):
    double.reply = vision_reply()
    cal = ask(api, model="vlm-off").json()["calibration"]
    assert "visual_probe" not in cal and "visual_reliance" not in cal
    assert len(double.requests) == 1
    cal = ask(api, model="vlm", visual_probe=False).json()["calibration"]
    assert "visual_probe" not in cal
    cal = ask(api, model="vlm-never").json()["calibration"]  # sample_rate 0
    assert "visual_probe" not in cal
    assert len(double.requests) == 3


def test_the_request_opts_in_on_a_model_without_the_probe(api, double):
    double.reply = vision_reply()
    cal = ask(api, model="vlm-off", visual_probe=True).json()["calibration"]
    assert cal["visual_probe"]["status"] == "done" and cal["visual_reliance"] > 0.5


def test_remote_images_are_not_fetched(api, double):
    double.reply = vision_reply()
    cal = ask(api, url="https://example.com/cat.png").json()["calibration"]
    assert cal["visual_reliance"] is None
    assert cal["visual_probe"] == {
        "perturbation": "blank",
        "status": "skipped",
        "reason": "remote_image",
    }
    assert len(double.requests) == 1


def test_no_image_is_skipped(api, double):
    double.reply = vision_reply()
    body = {"model": "vlm", "messages": [{"role": "user", "content": "A or B?"}]}
    cal = api.post("/v1/chat/completions", json=body).json()["calibration"]
    assert cal["visual_probe"]["reason"] == "no_images"
    completion = api.post("/v1/completions", json={"model": "vlm", "prompt": "Pick: A"})
    assert completion.json()["calibration"]["visual_probe"]["reason"] == "no_images"
    assert len(double.requests) == 2


def test_assistant_prefill_is_skipped_in_sequence_mode(api, double):
    double.reply = vision_reply()
    body = {
        "model": "vlm-seq",
        "messages": [*messages(picture()), {"role": "assistant", "content": "It is"}],
    }
    cal = api.post("/v1/chat/completions", json=body).json()["calibration"]
    assert cal["visual_probe"]["status"] == "skipped"
    assert cal["visual_probe"]["reason"] == "assistant_prefill"


@pytest.mark.parametrize("value", ["grey", 1, {"on": True}])
def test_invalid_request_value_is_a_clear_400(api, double, value):
    r = ask(api, visual_probe=value)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "calibration.visual_probe"
    assert "blank" in error["message"] and error["type"] == "invalid_request_error"
    assert double.requests == []


# ------------------------------------------------------------------------- failure isolation


def _probe_fails_with(answer_reply):
    answer = vision_reply()

    def reply(path: str, body: dict):
        return answer(path, body) if image_kind(body) == "picture" else answer_reply

    return reply


@pytest.mark.parametrize(
    ("model", "failing", "reason"),
    [
        ("vlm", JSONReply({"error": {"message": "boom", "type": "x"}}, 500), "upstream_error"),
        ("vlm", Stall(UPSTREAM_TIMEOUT_S + 0.5), "upstream_timeout"),
        ("vlm-quick", Stall(1.0), "timeout"),
        ("vlm", JSONReply({"choices": []}), "upstream_returned_no_logprobs"),
        ("vlm-seq", JSONReply({"error": {"message": "boom", "type": "x"}}, 500), "upstream_error"),
        ("vlm-seq", JSONReply({"choices": []}), "no_prompt_logprobs"),
    ],
)
def test_a_failing_probe_never_fails_the_answer(api, double, model, failing, reason):
    double.reply = _probe_fails_with(failing)
    r = ask(api, model=model)
    assert r.status_code == 200, r.text
    cal = r.json()["calibration"]
    assert cal["confidence"] is not None and r.json()["choices"][0]["message"]["content"] == "A"
    assert cal["visual_reliance"] is None
    assert cal["visual_probe"]["status"] == "failed"
    assert cal["visual_probe"]["reason"] == reason


def test_an_unreadable_image_fails_the_probe_not_the_answer(api, double):
    double.reply = JSONReply(chat_response([("A", -0.1, [("A", -0.1), ("B", -3.0)])]))
    cal = ask(api, url="data:image/png;base64,QUJDRA==").json()["calibration"]
    assert cal["visual_probe"] == {"perturbation": "blank", "status": "failed",
                                   "reason": "bad_image"}  # fmt: skip
    assert len(double.requests) == 1


# --------------------------------------------------------------------- recorded and measured


def test_recorded_with_the_prediction_and_on_metrics(api, double, probe_gateway):
    double.reply = vision_reply()
    task = f"probe-{time.monotonic_ns()}"
    cid = ask(api, task=task).json()["calibration"]["id"]
    cal2 = ask(api, url=grey(), task=task).json()["calibration"]  # reliance 0: below the floor
    assert cal2["visual_reliance"] == pytest.approx(0.0, abs=1e-12)

    metrics = api.get("/metrics").text
    lines = [line for line in metrics.splitlines() if f'task="{task}"' in line]
    count = next(line for line in lines if line.startswith("calib_visual_reliance_count"))
    assert count.endswith(" 2.0")
    share = next(line for line in lines if line.startswith("calib_visual_reliance_low_share"))
    assert share.endswith(" 0.5") and 'model="vlm"' in share
    assert 'calib_visual_probes_total{model="vlm",status="done"}' in metrics

    store = probe_gateway.app.state.store
    record = None
    for _ in range(200):
        record = store.get_prediction(cid)
        if record is not None:
            break
        time.sleep(0.025)
    assert record is not None
    assert record.features["signals"]["visual_reliance"] > 0.5
    assert record.features["visual_probe"] == "blank:done"


@pytest.mark.parametrize(("sent", "probed"), [(None, 32), (500, 32), (5, 5)])
def test_the_options_probe_caps_its_answer_length(api, double, sent, probed):
    double.reply = vision_reply()
    body = {"model": "vlm", "messages": messages(picture()), "calibration": {}}
    if sent is not None:
        body["max_tokens"] = sent
    assert api.post("/v1/chat/completions", json=body).status_code == 200
    main = next(r.json for r in double.requests if image_kind(r.json) == "picture")
    probe = next(r.json for r in double.requests if image_kind(r.json) == "uniform")
    assert probe["max_tokens"] == probed
    assert main.get("max_tokens") == sent  # the client's own request is untouched
