"""The gateway is the engine, byte for byte where JSON allows: a differential test.

Each request shape is sent straight to the real engine (vLLM CPU + Gemma 3 270M) and through
the gateway, at temperature 0 (or with a fixed seed), and the two answers are compared: texts,
finish and stop reasons, logprob tokens and their top lists (values within `TOL`: vLLM's CPU
logprobs can move in the last digits between runs), prompt logprobs with their ranks, usage,
the order of streamed events (usage last before `[DONE]`), and error statuses and bodies.

Most shapes carry `calibration: {options: [...]}` through the gateway, so the gateway asks the
engine for 20 logprobs per token and must trim back to exactly what the engine returns for the
client's own request. What the gateway adds — `calibration` (top level and per choice) — is
checked for presence and then removed before comparing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import start_gateway
from tests.integration.conftest import ENGINE_TEST_TIMEOUT_S, RunningEngine

pytestmark = [pytest.mark.engine, pytest.mark.timeout(ENGINE_TEST_TIMEOUT_S)]

# Absolute, on logprobs: the shared CPU engine batches concurrent requests, which moves
# logprobs by a few hundredths (0.03 seen); top-k lists may then order tied tokens differently.
TOL = 0.1
OPTIONS = {"options": ["A", "B", "C", "D"]}  # options mode: the gateway asks for top-20
SEQUENCE = {"mode": "sequence"}

QUESTION = "Question: Is fire hot? A) yes B) no\nAnswer:"
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
PREFILL = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "The colour is"},
]


@dataclass
class Shape:
    name: str
    path: str  # "/chat/completions" | "/completions"
    body: dict[str, Any]
    calibration: dict[str, Any] | None = field(default_factory=lambda: dict(OPTIONS))


def _shapes(model: str, ids: list[int]) -> list[Shape]:
    def chat(**extra: Any) -> dict[str, Any]:
        return {"model": model, "messages": CHAT, "max_tokens": 6, "temperature": 0, **extra}

    def cmpl(**extra: Any) -> dict[str, Any]:
        return {"model": model, "prompt": QUESTION, "max_tokens": 4, "temperature": 0, **extra}

    seeded = {"temperature": 1.0, "seed": 7}
    usage = {"stream_options": {"include_usage": True}}
    return [
        Shape("chat plain", "/chat/completions", chat()),
        Shape("chat plain, sequence mode", "/chat/completions", chat(), SEQUENCE),
        Shape("chat logprobs top 3", "/chat/completions", chat(logprobs=True, top_logprobs=3)),
        Shape("chat logprobs, no top", "/chat/completions", chat(logprobs=True)),
        Shape(
            "chat n=3 sampled with seed, top 2",
            "/chat/completions",
            chat(n=3, logprobs=True, top_logprobs=2, **seeded),
        ),
        Shape("chat stop", "/chat/completions", chat(stop=["."], max_tokens=12)),
        Shape(
            "chat structured_outputs choice",
            "/chat/completions",
            chat(structured_outputs={"choice": ["Paris", "Lyon"]}, logprobs=True, top_logprobs=1),
        ),
        Shape("chat logit_bias", "/chat/completions", chat(logit_bias={"818": 100})),
        Shape("chat max_tokens 1", "/chat/completions", chat(max_tokens=1, logprobs=True)),
        Shape(
            "chat echo (assistant prefill continued)",
            "/chat/completions",
            {
                **chat(echo=True, add_generation_prompt=False, continue_final_message=True),
                "messages": PREFILL,
            },
        ),
        Shape("chat prompt_logprobs 2", "/chat/completions", chat(prompt_logprobs=2)),
        Shape("chat stream", "/chat/completions", chat(stream=True)),
        Shape("chat stream with usage", "/chat/completions", chat(stream=True, **usage)),
        Shape(
            "chat stream logprobs top 2 with usage",
            "/chat/completions",
            chat(stream=True, logprobs=True, top_logprobs=2, **usage),
        ),
        Shape("chat stream n=2 seeded", "/chat/completions", chat(stream=True, n=2, **seeded)),
        Shape("chat error: unknown model", "/chat/completions", chat(model="no-such-model")),
        Shape("chat error: negative max_tokens", "/chat/completions", chat(max_tokens=-1)),
        Shape(
            "chat error: top_logprobs without logprobs",
            "/chat/completions",
            chat(top_logprobs=3),
        ),
        Shape("completions plain", "/completions", cmpl()),
        Shape("completions logprobs 1", "/completions", cmpl(logprobs=1)),
        Shape("completions logprobs 0", "/completions", cmpl(logprobs=0, max_tokens=1)),
        Shape("completions echo, logprobs 1", "/completions", cmpl(echo=True, logprobs=1)),
        Shape("completions echo, no logprobs", "/completions", cmpl(echo=True), SEQUENCE),
        Shape(
            "completions echo, logprobs 2, prompt_logprobs 4",
            "/completions",
            cmpl(echo=True, logprobs=2, prompt_logprobs=4),
        ),
        Shape("completions prompt_logprobs 1", "/completions", cmpl(prompt_logprobs=1)),
        Shape(
            "completions list of 2 prompts, logprobs 2",
            "/completions",
            cmpl(prompt=[QUESTION, "The capital of France is"], logprobs=2),
        ),
        Shape("completions token-id prompt", "/completions", cmpl(prompt=ids, logprobs=1)),
        Shape(
            "completions list of token-id prompts, echo",
            "/completions",
            cmpl(prompt=[ids, ids[:3]], echo=True, logprobs=1),
        ),
        Shape(
            "completions n=2 sampled with seed, logprobs 3",
            "/completions",
            cmpl(n=2, logprobs=3, **seeded),
        ),
        Shape("completions stop", "/completions", cmpl(stop=["\n"], max_tokens=8)),
        Shape("completions seed", "/completions", cmpl(seed=3, temperature=0.7)),
        Shape(
            "completions structured_outputs regex",
            "/completions",
            cmpl(structured_outputs={"regex": " [AB]"}, logprobs=0),
        ),
        Shape("completions logit_bias", "/completions", cmpl(logit_bias={"562": 50}, logprobs=1)),
        Shape("completions stream", "/completions", cmpl(stream=True)),
        Shape("completions stream with usage", "/completions", cmpl(stream=True, **usage)),
        Shape(
            "completions stream echo, logprobs 1",
            "/completions",
            cmpl(stream=True, echo=True, logprobs=1),
        ),
        Shape(
            "completions stream echo, logprobs 2, with usage",
            "/completions",
            cmpl(stream=True, echo=True, logprobs=2, **usage),
        ),
        Shape("completions stream n=2 seeded", "/completions", cmpl(stream=True, n=2, **seeded)),
        Shape("completions error: unknown model", "/completions", cmpl(model="no-such-model")),
        Shape("completions error: negative max_tokens", "/completions", cmpl(max_tokens=-1)),
    ]


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gw(engine: RunningEngine, tmp_path_factory) -> Iterator[str]:
    gateway = start_gateway(
        engine.base_url,
        tmp_path_factory.mktemp("gw-diff") / "calib.db",
        upstream_timeout_s=120.0,
    )
    try:
        yield gateway.base_url
    finally:
        gateway.server.stop()


@pytest.fixture(scope="module")
def prompt_ids(engine: RunningEngine) -> list[int]:
    root = engine.base_url.removesuffix("/v1")
    r = httpx.post(f"{root}/tokenize", json={"model": engine.model, "prompt": QUESTION}, timeout=60)
    r.raise_for_status()
    return r.json()["tokens"]


def _shape_names() -> list[str]:
    return [shape.name for shape in _shapes("m", [1, 2, 3])]


# ------------------------------------------------------------------------------- the test


@pytest.mark.parametrize("name", _shape_names())
def test_gateway_answers_as_the_engine(
    name: str, engine: RunningEngine, gw: str, prompt_ids: list[int]
) -> None:
    shape = next(s for s in _shapes(engine.model, prompt_ids) if s.name == name)
    with httpx.Client(timeout=180) as http:
        direct = _send(http, engine.base_url + shape.path, shape.body)
        body = dict(shape.body)
        if shape.calibration is not None:
            body["calibration"] = shape.calibration
        through = _send(http, gw + shape.path, body)

    assert through.status == direct.status, (through.body, direct.body)
    if direct.status != 200:
        assert "error" in direct.body  # the shape really is an engine error
        assert through.body == direct.body
        return
    if shape.body.get("stream"):
        _compare_streams(direct.events, through.events, shape)
    else:
        _compare_bodies(direct.body, through.body)


@dataclass
class _Answer:
    status: int
    body: Any = None
    events: list[Any] = field(default_factory=list)


def _send(http: httpx.Client, url: str, body: dict[str, Any]) -> _Answer:
    if not body.get("stream"):
        r = http.post(url, json=body)
        return _Answer(r.status_code, r.json())
    with http.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            return _Answer(r.status_code, json.loads(r.read()))
        events = [
            line[6:] if line[6:] == "[DONE]" else json.loads(line[6:])
            for line in r.iter_lines()
            if line.startswith("data: ")
        ]
    return _Answer(200, events=events)


# -------------------------------------------------------------------------- comparisons


def _strip_calibration(body: dict[str, Any]) -> dict[str, Any]:
    """The gateway's additions, checked and removed."""
    body = json.loads(json.dumps(body))
    top = body.pop("calibration")
    assert top["id"] == body["id"]
    for i, choice in enumerate(body["choices"]):
        cal = choice.pop("calibration")
        assert cal["id"] == (body["id"] if choice["index"] == 0 else f"{body['id']}-{i}")
        if choice["index"] == 0:
            assert cal == top
    return body


def _compare_bodies(direct: dict[str, Any], through: dict[str, Any]) -> None:
    through = _strip_calibration(through)
    for key in ("id", "created"):
        direct.pop(key), through.pop(key)
    _same(direct, through, "$")


def _same(a: Any, b: Any, where: str) -> None:
    """Equal JSON; floats within TOL; top-logprob lists equal up to tied alternatives."""
    if _is_top(a) and _is_top(b):
        _same_top(_as_top(a), _as_top(b), where)
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), where
        assert math.isclose(a, b, abs_tol=TOL), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: {list(a)} != {b}"
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _is_top(value: Any) -> bool:
    """A per-token alternatives list: legacy `{token: logprob}`, chat `[{token, logprob,
    bytes}]`, or a `prompt_logprobs` entry `{token_id: {logprob, rank, decoded_token}}`."""
    if isinstance(value, dict) and value:
        first = next(iter(value.values()))
        return isinstance(first, float) or (isinstance(first, dict) and "rank" in first)
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) and set(v) == {"token", "logprob", "bytes"} for v in value)
    )


def _as_top(value: Any) -> list[tuple[str, float, Any]]:
    """(key, logprob, rest) in the engine's order."""
    if isinstance(value, list):
        return [(v["token"], v["logprob"], v["bytes"]) for v in value]
    out = []
    for key, v in value.items():
        if isinstance(v, dict):
            out.append((key, v["logprob"], (v["decoded_token"], v["rank"])))
        else:
            out.append((key, v, None))
    return out


def _same_top(a: list, b: list, where: str) -> None:
    """Same length and first entry (the sampled/prompt token); then the same tokens with close
    logprobs, except that tokens tied within TOL may swap places, or swap in and out at the end
    of the list (vLLM's top-k breaks ties differently for different k, and from run to run: a
    sampled token tied with another is listed with or without it)."""
    if len(a) != len(b):
        short, long = sorted((a, b), key=len)
        extra = [lp for key, lp, _ in long[1:] if key not in {k for k, _, _ in short}]
        assert len(long) == len(short) + 1, f"{where}: {a} != {b}"
        assert any(abs(lp - long[0][1]) <= TOL for lp in extra), f"{where}: {a} != {b}"
        a, b = short, [entry for entry in long if entry[0] in {k for k, _, _ in short}]
    (key_a, lp_a, more_a), (key_b, lp_b, more_b) = a[0], b[0]
    assert key_a == key_b and math.isclose(lp_a, lp_b, abs_tol=TOL), f"{where}: {a} != {b}"
    if more_a != more_b:  # a prompt token's rank moves only with a tie around it
        assert isinstance(more_a, tuple) and more_a[0] == more_b[0], f"{where}: {a} != {b}"
        assert any(abs(lp - lp_a) <= TOL for _, lp, _ in a[1:] + b[1:]), f"{where}: {a} {b}"
    for (_, va, _), (_, vb, _) in zip(a, b, strict=True):
        assert math.isclose(va, vb, abs_tol=TOL), f"{where}: {a} != {b}"
    last = min(a[-1][1], b[-1][1])
    for mine, theirs in ((a, b), (b, a)):
        keys = {k for k, _, _ in theirs}
        for key, lp, _ in mine:  # only on one side: tied with the end of the list
            assert key in keys or lp - last <= TOL, f"{where}: {key!r} of {mine} not in {theirs}"


def _compare_streams(direct: list[Any], through: list[Any], shape: Shape) -> None:
    assert direct[-1] == "[DONE]" and through[-1] == "[DONE]"
    direct, through = direct[:-1], through[:-1]
    wants_usage = bool(shape.body.get("stream_options", {}).get("include_usage"))

    # The response's calibration rides on the last event: the usage chunk when asked for (which
    # stays last, as OpenAI puts it), else one extra chunk with no choices.
    last = through[-1]
    assert "calibration" in last and last["choices"] == []
    if wants_usage:
        assert "usage" in direct[-1] and direct[-1]["choices"] == []
        last = dict(last)
        last.pop("calibration")
        through = [*through[:-1], last]
        _same(_no_ids(direct[-1]), _no_ids(last), "usage chunk")
    else:
        assert all("usage" not in e for e in direct)
        assert all("usage" not in e for e in through)
        through = through[:-1]

    finished = {}
    for event in through:
        for choice in event["choices"]:
            cal = choice.pop("calibration", None)
            assert (cal is not None) == (choice.get("finish_reason") is not None), choice
            if cal is not None:
                finished[choice["index"]] = cal
    assert sorted(finished) == sorted(_aggregate(direct))
    assert {k for e in direct for k in e} == {k for e in through for k in e}
    _same(_aggregate(direct), _aggregate(through), "stream")


def _no_ids(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("id", "created")}


def _aggregate(events: list[Any]) -> dict[int, dict[str, Any]]:
    """Per choice: the concatenated text and logprobs, the finish and stop reasons."""
    out: dict[int, dict[str, Any]] = {}
    for event in events:
        for choice in event.get("choices") or ():
            acc = out.setdefault(
                choice["index"], {"text": "", "logprobs": [], "finish": [], "stop": []}
            )
            if "delta" in choice:
                acc["text"] += choice["delta"].get("content") or ""
                lp = choice.get("logprobs")
                acc["logprobs"].extend(lp["content"] if lp else [])
            else:
                acc["text"] += choice["text"]
                lp = choice.get("logprobs")
                if lp:
                    acc["logprobs"].extend(
                        zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True)
                    )
            if choice.get("finish_reason") is not None:
                acc["finish"].append(choice["finish_reason"])
                acc["stop"].append(choice.get("stop_reason"))
    for acc in out.values():
        acc["logprobs"] = json.loads(json.dumps(acc["logprobs"]))
    return out
