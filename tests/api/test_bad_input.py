"""The bad-input battery: every malformed request is a 4xx in OpenAI's shape, never a 5xx,
nothing malformed reaches the upstream, and the process stays healthy afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import MAX_BODY_BYTES

MSG = [{"role": "user", "content": "hi"}]

# (name, path, raw body or JSON-able value, extra headers, expected status)
CASES = [
    ("malformed json", "/v1/chat/completions", b'{"model": "m", "messages": [', {}, 400),
    ("trailing garbage", "/v1/chat/completions", b'{"model": "m"} xx', {}, 400),
    ("empty body", "/v1/chat/completions", b"", {}, 400),
    ("not an object", "/v1/chat/completions", [1, 2], {}, 400),
    ("json null", "/v1/chat/completions", None, {}, 400),
    ("invalid utf-8", "/v1/chat/completions", b'{"model": "\xff\xfe"}', {}, 400),
    ("missing model", "/v1/chat/completions", {"messages": MSG}, {}, 400),
    ("missing messages", "/v1/chat/completions", {"model": "m"}, {}, 400),
    ("empty messages", "/v1/chat/completions", {"model": "m", "messages": []}, {}, 400),
    ("model is a number", "/v1/chat/completions", {"model": 3, "messages": MSG}, {}, 400),
    ("messages is a string", "/v1/chat/completions", {"model": "m", "messages": "hi"}, {}, 400),
    ("message not object", "/v1/chat/completions", {"model": "m", "messages": ["hi"]}, {}, 400),
    (
        "message without role",
        "/v1/chat/completions",
        {"model": "m", "messages": [{"content": "x"}]},
        {},
        400,
    ),
    (
        "content is a number",
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": 5}]},
        {},
        400,
    ),
    (
        "content part without type",
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]},
        {},
        400,
    ),
    (
        "stream is a string",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "stream": "yes"},
        {},
        400,
    ),
    ("n is zero", "/v1/chat/completions", {"model": "m", "messages": MSG, "n": 0}, {}, 400),
    (
        "logprobs is a string",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "logprobs": "yes"},
        {},
        400,
    ),
    (
        "negative top_logprobs",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "logprobs": True, "top_logprobs": -1},
        {},
        400,
    ),
    (
        "huge top_logprobs",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "logprobs": True, "top_logprobs": 10**9},
        {},
        400,
    ),
    (
        "float top_logprobs",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "top_logprobs": 2.5},
        {},
        400,
    ),
    (
        "legacy negative logprobs",
        "/v1/completions",
        {"model": "m", "prompt": "x", "logprobs": -3},
        {},
        400,
    ),
    (
        "legacy huge logprobs",
        "/v1/completions",
        {"model": "m", "prompt": "x", "logprobs": 21},
        {},
        400,
    ),
    ("legacy missing prompt", "/v1/completions", {"model": "m"}, {}, 400),
    ("legacy prompt is an object", "/v1/completions", {"model": "m", "prompt": {"a": 1}}, {}, 400),
    (
        "calibration not an object",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "calibration": "yes"},
        {},
        400,
    ),
    (
        "calibration unknown key",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "calibration": {"temperature": 2}},
        {},
        400,
    ),
    (
        "calibration bad mode",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "calibration": {"mode": "vibes"}},
        {},
        400,
    ),
    (
        "calibration threshold > 1",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "calibration": {"threshold": 7}},
        {},
        400,
    ),
    (
        "calibration options not a list",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "calibration": {"options": "ABCD"}},
        {},
        400,
    ),
    (
        "calibration idk not an option",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "calibration": {"options": ["A", "B"], "idk_option": "Z"}},
        {},
        400,
    ),
    (
        "options mode without options",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "calibration": {"mode": "options"}},
        {},
        400,
    ),
    (
        "calibration bad task",
        "/v1/chat/completions",
        {"model": "m", "messages": MSG, "calibration": {"task": "../../etc"}},
        {},
        400,
    ),
    (
        "bad data url",
        "/v1/chat/completions",
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
                    ],
                }
            ],
        },
        {},
        400,
    ),
    (
        "wrong content-type",
        "/v1/chat/completions",
        json.dumps({"model": "m", "messages": MSG}),
        {"content-type": "text/plain"},
        415,
    ),
    (
        "form content-type",
        "/v1/chat/completions",
        b"model=m",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
    ),
    ("huge body", "/v1/chat/completions", b"x" * (MAX_BODY_BYTES + 10), {}, 413),
]


def _send(client: httpx.Client, path: str, body, headers: dict) -> httpx.Response:
    if isinstance(body, bytes | str):
        content = body.encode() if isinstance(body, str) else body
    else:
        content = json.dumps(body).encode()
    headers = {"content-type": "application/json", **headers}
    return client.post(path, content=content, headers=headers)


@pytest.mark.parametrize(
    ("name", "path", "body", "headers", "status"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_4xx_in_openai_shape(client, double, name, path, body, headers, status):
    r = _send(client, path, body, headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in r.text
    assert double.requests == []  # nothing malformed reached the engine
    assert client.get("/healthz").status_code == 200


def test_huge_chunked_body_is_cut_off_with_413(client, double):
    def chunks():
        for _ in range(MAX_BODY_BYTES // 65536 + 4):
            yield b"x" * 65536

    r = client.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert double.requests == []


def test_unicode_everywhere_round_trips(client, double):
    text = "Ça va? 你好 👋🏽 \u202e émoji \U0001f600 \x00"
    body = {
        "model": "mcq",
        "messages": [{"role": "user", "content": text}],
        "calibration": {"task": "ünïcode"[:0] or "vqa"},
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert double.last.json["messages"][0]["content"] == text


def test_lone_surrogate_is_400_not_500(client, double):
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}'
    r = client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "surrogate" in r.json()["error"]["message"]


def test_unknown_route_and_wrong_method_are_openai_shaped(client):
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"]
    r = client.post("/v1/nope", json={})
    assert r.status_code == 404 and r.json()["error"]["message"]


def test_still_healthy_after_the_battery(client, double):
    for _, path, body, headers, _ in CASES:
        _send(client, path, body, headers)
    assert client.get("/healthz").status_code == 200
    r = client.post("/v1/chat/completions", json={"model": "mcq", "messages": MSG})
    assert r.status_code == 200 and "calibration" in r.json()
