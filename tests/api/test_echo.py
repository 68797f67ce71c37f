"""`/v1/completions` with `echo`: the prompt's tokens come back in front of the answer's.

The upstream double answers in vLLM 0.32's exact shape for `echo` + `logprobs` (values taken
from the real engine on "The capital of France is", cut to the top-4): per position the prompt
or sampled token first, then the top-K by rank, and one `prompt_logprobs` entry (with ranks) per
prompt token. The gateway must score only the generated tokens and trim every list back to what
vLLM returns for the client's own `logprobs`.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest

from tests.upstream_double import JSONReply, StreamReply

PROMPT = "The capital of France is"
# (token, token id, logprob, rank, alternatives [(token, id, logprob)] in rank order)
PROMPT_STEPS: list[tuple[str, int, float | None, int | None, list[tuple[str, int, float]]]] = [
    ("<bos>", 2, None, None, []),
    ("The", 818, -2.89, 5,
     [("<h1>", 184, -2.46), ("A", 236776, -2.6), ("In", 902, -2.7), ("This", 2094, -2.8)]),
    (" capital", 5279, -9.69, 700,
     [(" ", 236743, -1.19), (" first", 1171, -2.94), (" new", 861, -3.44), (" on", 2269, -3.81)]),
    (" of", 529, -0.88, 1, [(" in", 528, -2.1), (" and", 532, -2.6), (" for", 573, -3.0)]),
    (" France", 7001, -5.07, 3, [(" the", 506, -0.82), (" South", 4257, -4.07), (" a", 496, -5.5)]),
    (" is", 563, -1.32, 2, [(",", 236764, -1.2), (".", 236761, -2.0), (" and", 532, -2.5)]),
]  # fmt: skip
GENERATED = [
    (" the", -1.68, [(" a", -1.9), (" known", -2.5), (" Paris", -2.7)]),
    (" capital", -0.67, [(" city", -1.5), (" home", -2.4), (" country", -2.9)]),
    (" of", -0.12, [(",", -2.9), (" and", -3.5), (".", -3.9)]),
]


def _top(token: str, lp: float, alternatives: list) -> dict[str, float]:
    return {token: lp, **{alt[0]: alt[-1] for alt in alternatives}}


def echo_logprobs(generated: list = GENERATED) -> dict[str, Any]:
    tokens = [s[0] for s in PROMPT_STEPS] + [g[0] for g in generated]
    tops = [None if s[2] is None else _top(s[0], s[2], s[4]) for s in PROMPT_STEPS]
    tops += [_top(*g) for g in generated]
    offsets, pos = [], 0
    for token in tokens:
        offsets.append(pos)
        pos += len(token)
    return {
        "text_offset": offsets,
        "token_logprobs": [s[2] for s in PROMPT_STEPS] + [g[1] for g in generated],
        "tokens": tokens,
        "top_logprobs": tops,
    }


def prompt_logprobs() -> list[Any]:
    out: list[Any] = [None]
    for token, tid, lp, rank, alternatives in PROMPT_STEPS[1:]:
        entry = {str(tid): {"logprob": lp, "rank": rank, "decoded_token": token}}
        ranks = (r for r in range(1, 30) if r != rank)  # the token holds its own place
        for (alt, alt_id, alt_lp), r in zip(alternatives, ranks, strict=False):
            entry[str(alt_id)] = {"logprob": alt_lp, "rank": r, "decoded_token": alt}
        out.append(entry)
    return out


def echo_body() -> dict[str, Any]:
    text = PROMPT + "".join(g[0] for g in GENERATED)
    return {
        "id": f"cmpl-echo-{time.monotonic_ns()}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": echo_logprobs(),
                "finish_reason": "length",
                "stop_reason": None,
                "token_ids": None,
                "prompt_logprobs": prompt_logprobs(),
                "prompt_token_ids": None,
            }
        ],
        "usage": {"prompt_tokens": 6, "total_tokens": 9, "completion_tokens": 3},
    }


def complete(client, model: str = "plain", **extra: Any):
    body = {"model": model, "prompt": PROMPT, "max_tokens": 3, "echo": True, **extra}
    return client.post("/v1/completions", json=body)


GENERATED_MEAN = (-1.68 - 0.67 - 0.12) / 3


def test_sequence_confidence_scores_only_the_generated_tokens(client, double, gateway):
    double.reply = JSONReply(echo_body())
    body = complete(client).json()
    cal = body["calibration"]
    assert cal["raw_confidence"] == pytest.approx(math.exp(GENERATED_MEAN), abs=1e-12)
    assert body["choices"][0]["text"] == PROMPT + " the capital of"  # the echo is the engine's
    store = gateway.app.state.store
    deadline = time.monotonic() + 5
    while (record := store.get_prediction(cal["id"])) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert record.answer == "the capital of"  # the answer, not the prompt
    assert record.features["n_tokens"] == 3


def test_not_asked_for_logprobs_and_prompt_logprobs_are_removed(client, double):
    double.reply = JSONReply(echo_body())
    choice = complete(client).json()["choices"][0]
    assert double.last.json["logprobs"] == 0  # the gateway asked (sequence mode: tokens only)
    assert choice["logprobs"] is None
    assert choice["prompt_logprobs"] is None  # vLLM: none without `logprobs` or `prompt_logprobs`


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (
            1,
            [
                None,
                {"The": -2.89, "<h1>": -2.46},  # rank 5: the token and the top-1
                {" capital": -9.69, " ": -1.19},
                {" of": -0.88},  # rank 1: the token is the top-1
                {" France": -5.07, " the": -0.82},
                {" is": -1.32, ",": -1.2},
                {" the": -1.68},  # the greedy token is the top-1
                {" capital": -0.67},
                {" of": -0.12},
            ],
        ),
        (
            2,
            [
                None,
                {"The": -2.89, "<h1>": -2.46, "A": -2.6},
                {" capital": -9.69, " ": -1.19, " first": -2.94},
                {" of": -0.88, " in": -2.1},
                {" France": -5.07, " the": -0.82, " South": -4.07},  # rank 3 > 2
                {" is": -1.32, ",": -1.2},  # rank 2: n entries
                {" the": -1.68, " a": -1.9},
                {" capital": -0.67, " city": -1.5},
                {" of": -0.12, ",": -2.9},
            ],
        ),
    ],
)
def test_top_lists_are_what_vllm_returns_for_the_clients_logprobs(client, double, n, expected):
    double.reply = JSONReply(echo_body())
    choice = complete(client, model="mcq", logprobs=n).json()["choices"][0]
    assert double.last.json["logprobs"] == 20
    assert choice["logprobs"]["top_logprobs"] == expected
    assert choice["logprobs"]["tokens"] == echo_logprobs()["tokens"]
    for entry in choice["prompt_logprobs"][1:]:
        first, *alternatives = entry.values()
        assert sorted(a["rank"] for a in [*alternatives, first] if a["rank"] <= n) == list(
            range(1, n + 1)
        )
        assert len(alternatives) == (n - 1 if first["rank"] <= n else n)


def test_the_clients_own_prompt_logprobs_are_left_alone(client, double):
    double.reply = JSONReply(echo_body())
    choice = complete(client, model="mcq", logprobs=1, prompt_logprobs=3).json()["choices"][0]
    assert choice["prompt_logprobs"] == prompt_logprobs()
    tops = choice["logprobs"]["top_logprobs"]
    # vLLM cuts the prompt positions' lists (computed for prompt_logprobs) to logprobs + 1.
    assert tops[3] == {" of": -0.88, " in": -2.1}
    assert tops[6] == {" the": -1.68}  # generated: the usual rule


def test_options_mode_ignores_option_letters_in_the_echoed_prompt(client, double):
    """The prompt's "A" must not be taken for the answer: only generated tokens are scanned."""
    generated = [(" B", -0.2, [(" A", -1.9), (" C", -3.0)])]
    body = echo_body()
    body["choices"][0]["logprobs"] = echo_logprobs(generated)
    body["choices"][0]["text"] = PROMPT + " B"
    double.reply = JSONReply(body)
    cal = complete(client, model="mcq", calibration={"options": ["A", "B", "C"]}).json()
    assert cal["calibration"]["answer"] == "B"


def _stream_events() -> list[dict[str, Any]]:
    """vLLM's echo stream: the first chunk holds the prompt and the first answer token."""
    full = echo_logprobs()
    split = len(PROMPT_STEPS) + 1
    texts = [PROMPT + GENERATED[0][0], *(g[0] for g in GENERATED[1:])]
    cuts = [(0, split), (split, split + 1), (split + 1, split + 2)]
    events = []
    for i, ((lo, hi), text) in enumerate(zip(cuts, texts, strict=True)):
        events.append(
            {
                "id": "cmpl-echo-stream",
                "object": "text_completion",
                "created": 1,
                "model": "test-model",
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": {key: value[lo:hi] for key, value in full.items()},
                        "finish_reason": "length" if i == 2 else None,
                        "stop_reason": None,
                    }
                ],
            }
        )
    return events


def test_streamed_echo_scores_only_the_generated_tokens(client, double):
    double.reply = StreamReply(_stream_events())
    body = {"model": "mcq", "prompt": PROMPT, "stream": True, "echo": True, "logprobs": 1}
    with client.stream(
        "POST", "/v1/completions", json={**body, "calibration": {"mode": "sequence"}}
    ) as r:
        got = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    cal = got[-1]["calibration"]
    assert cal["raw_confidence"] == pytest.approx(math.exp(GENERATED_MEAN), abs=1e-12)
    first = got[0]["choices"][0]["logprobs"]["top_logprobs"]
    assert first[1] == {"The": -2.89, "<h1>": -2.46} and first[-1] == {" the": -1.68}


def test_streamed_echo_of_token_ids_counts_the_ids(client, double):
    double.reply = StreamReply(_stream_events())
    ids = [s[1] for s in PROMPT_STEPS]
    body = {"model": "plain", "prompt": ids, "stream": True, "echo": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        got = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert got[-1]["calibration"]["raw_confidence"] == pytest.approx(
        math.exp(GENERATED_MEAN), abs=1e-12
    )
