"""Record real engine responses as JSON fixtures for the calibrators' unit tests.

Each fixture file holds the request that produced it and the engine's answer::

    {"endpoint": "/v1/chat/completions", "request": {...}, "response": {...}}   # non-streaming
    {"endpoint": "/v1/completions", "request": {...}, "chunks": [{...}, ...]}  # streaming

Re-record with `python scripts/record_engine_fixtures.py` (starts the embedded engine if no
`--base-url` is given). Greedy decoding keeps the recordings stable across runs on one build.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from service.datasets import build_question_set

FIXTURES_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "engine"
_FEW_SHOT = (
    "Q: What is the capital of Germany?\nA: Berlin\n"
    "Q: What is the capital of Japan?\nA: Tokyo\n"
    "Q: What is the capital of Italy?\nA: Rome\n"
)

_ASK_LETTER = "\nAnswer with the letter."
_CHAT_SHOTS = [
    {"role": "user", "content": "Q: What is the capital of Germany?\nA. Munich\nB. Berlin\n"
     "C. Vienna\nD. Hamburg" + _ASK_LETTER},
    {"role": "assistant", "content": "B"},
    {"role": "user", "content": "Q: What is the capital of Japan?\nA. Tokyo\nB. Osaka\n"
     "C. Seoul\nD. Kyoto" + _ASK_LETTER},
    {"role": "assistant", "content": "A"},
]  # fmt: skip


def fixture_requests(model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Fixture name -> (endpoint, request body). One place to see what is recorded."""
    options_q = next(q for q in build_question_set(seed=0, n=5, forms=["options"]))
    idk_q = next(q for q in build_question_set(seed=0, n=5, forms=["idk"]))
    letters = "Q: What is the capital of Australia?\nA. Sydney\nB. Canberra\nC. Melbourne\nD. Perth"
    greedy = {"model": model, "temperature": 0}
    return {
        "chat_freeform": (
            "/v1/chat/completions",
            greedy | {
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 8, "logprobs": True, "top_logprobs": 20,
            },
        ),
        # Zero-shot the base model does not answer with a letter (no option at the first token).
        "chat_options_zero_shot": (
            "/v1/chat/completions",
            greedy | {
                "messages": [{"role": "user", "content": letters + "\nAnswer with the letter."}],
                "max_tokens": 3, "logprobs": True, "top_logprobs": 20,
            },
        ),
        # Few-shot as earlier turns: it answers with a letter (here wrongly, A vs B close).
        "chat_options": (
            "/v1/chat/completions",
            greedy | {
                "messages": [*_CHAT_SHOTS, {"role": "user", "content": letters + _ASK_LETTER}],
                "max_tokens": 3, "logprobs": True, "top_logprobs": 20,
            },
        ),
        "completion_freeform_right": (
            "/v1/completions",
            greedy | {"prompt": _FEW_SHOT + "Q: What is the capital of France?\nA:",
                      "max_tokens": 8, "logprobs": 20, "stop": ["\n"]},
        ),
        "completion_freeform_wrong": (
            "/v1/completions",
            greedy | {"prompt": _FEW_SHOT + "Q: What is the capital of Paraguay?\nA:",
                      "max_tokens": 8, "logprobs": 20, "stop": ["\n"]},
        ),
        "completion_options": (
            "/v1/completions",
            greedy | {"prompt": options_q.prompt, "max_tokens": 2, "logprobs": 20},
        ),
        "completion_idk_options": (
            "/v1/completions",
            greedy | {"prompt": idk_q.prompt, "max_tokens": 2, "logprobs": 20},
        ),
        "chat_stream": (
            "/v1/chat/completions",
            greedy | {
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 4, "logprobs": True, "top_logprobs": 20, "stream": True,
            },
        ),
        "completion_stream": (
            "/v1/completions",
            greedy | {"prompt": _FEW_SHOT + "Q: What is the capital of France?\nA:",
                      "max_tokens": 4, "logprobs": 20, "stop": ["\n"], "stream": True},
        ),
    }  # fmt: skip


def record_fixtures(base_url: str, model: str, out_dir: Path = FIXTURES_DIR) -> list[Path]:
    """Send every fixture request to the engine at `base_url` (…/v1); write one JSON file each."""
    root = base_url.rstrip("/").removesuffix("/v1")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with httpx.Client(base_url=root, timeout=120) as client:
        version = client.get("/version").json().get("version", "unknown")
        for name, (endpoint, body) in fixture_requests(model).items():
            record: dict[str, Any] = {
                "endpoint": endpoint,
                "engine": f"vllm {version}",
                "request": body,
            }
            if body.get("stream"):
                record["chunks"] = _stream(client, endpoint, body)
            else:
                response = client.post(endpoint, json=body)
                response.raise_for_status()
                record["response"] = response.json()
            path = out_dir / f"{name}.json"
            path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
            written.append(path)
    return written


def _stream(client: httpx.Client, endpoint: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    chunks = []
    with client.stream("POST", endpoint, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line.removeprefix("data: ")))
    return chunks
