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


# -- string options (issue 20): shared prefixes, traps, multi-token answers, accents ----------

STRING_OPTIONS_FILE = "string_options.json"


def string_option_cases(model: str) -> list[dict[str, Any]]:
    """Completions whose answers test matching answer strings to options.

    ``expect`` is the option the text names (None: it names none). ``likelihood: true`` also
    records the batched prompt-logprobs request `service.proxy` sends (`_likelihood.py`).
    """
    greedy = {"model": model, "temperature": 0, "logprobs": 20}
    cloze = {"max_tokens": 8, "stop": ["\n"]}

    def ask(question: str) -> str:
        return f"{_FEW_SHOT}Q: {question}\nA:"

    return [
        # The model starts the next question: "Q." must not be read as "Quito".
        {"name": "q_trap", "options": ["Quito", "Lima", "Bogota"], "expect": None,
         "request": greedy | {"prompt": "Q. What is the capital of Ecuador?\nA. Quito\n",
                              "max_tokens": 4}},
        # " New" starts all three options: followed to " York".
        {"name": "new_york_shared", "options": ["New York", "New Delhi", "New Orleans"],
         "expect": "New York", "likelihood": True,
         "request": greedy | cloze | {
             "prompt": ask("What is the largest city in the United States?")}},
        # " Guatemala is a country": the country, not the option "Guatemala City".
        {"name": "guatemala_trap", "options": ["Guatemala City", "Quetzaltenango", "San Salvador"],
         "expect": None,
         "request": greedy | {
             "prompt": ask("What is the capital of Guatemala? Answer with the country's "
                           "capital city."), "max_tokens": 6}},
        # A wrong answer among options sharing " San".
        {"name": "san_juan_shared", "options": ["Guatemala City", "San Juan", "San José",
                                                "San Salvador"],
         "expect": "San Juan",
         "request": greedy | cloze | {"prompt": ask("What is the capital of Guatemala?")}},
        # Four tokens, " Port" shared by every option.
        {"name": "port_moresby_multi", "options": ["Port Louis", "Port Moresby", "Port Vila"],
         "expect": "Port Moresby",
         "request": greedy | cloze | {"prompt": ask("What is the capital of Papua New Guinea?")}},
        # " Bog" "ota" names "Bogotá"; " Bogotá" is also listed as one token.
        {"name": "bogota_accent", "options": ["Bogotá", "Lima", "Quito"], "expect": "Bogotá",
         "likelihood": True,
         "request": greedy | cloze | {"prompt": ask("What is the capital of Colombia?")}},
        # " Mexico City" names the longer of "Mexico" and "Mexico City".
        {"name": "mexico_city_longest", "options": ["Mexico", "Mexico City", "Guadalajara"],
         "expect": "Mexico City", "likelihood": True,
         "request": greedy | cloze | {"prompt": ask("What is the capital of Mexico?")}},
    ]  # fmt: skip


def record_string_options(base_url: str, model: str, out_dir: Path = FIXTURES_DIR) -> Path:
    """Record `string_option_cases` into one fixture file."""
    from service.proxy import completion_request

    root = base_url.rstrip("/").removesuffix("/v1")
    cases = []
    with httpx.Client(base_url=root, timeout=120) as client:
        version = client.get("/version").json().get("version", "unknown")
        for case in string_option_cases(model):
            response = client.post("/v1/completions", json=case["request"])
            response.raise_for_status()
            record = {**case, "endpoint": "/v1/completions", "response": response.json()}
            if case.get("likelihood"):
                body = completion_request(case["request"], case["options"])
                scored = client.post("/v1/completions", json=body)
                scored.raise_for_status()
                record["likelihood_request"] = body
                record["likelihood_response"] = scored.json()
            cases.append(record)
    path = out_dir / STRING_OPTIONS_FILE
    data = {"engine": f"vllm {version}", "cases": cases}
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path
