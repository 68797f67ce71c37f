"""Prompt optimization as a job, against the upstream double: start, progress, held-out
decision, profile version, crash + resume, from-feedback replay.

The double is a tiny deterministic "model": completion prompts are answered correctly and
confidently when the injected instruction contains "PLANTED", half right with "must", and with
"A" otherwise; paraphrase requests get fixed paraphrases.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from service.prompt_opt import (
    JobConfig,
    create_job,
    get_job,
    parse_paraphrases,
    run_job,
    split_items,
)
from service.prompt_opt.items import item_from_record
from tests.conftest import start_gateway
from tests.upstream_double import JSONReply, chat_response, legacy_steps

_ids = itertools.count()
SEEDS = ["The answer might be", "The answer must be"]
TREE = {
    "The answer might be": ["Maybe it is", "It could be"],
    "The answer must be": ["PLANTED: it must be", "Surely it is"],
    "Maybe it is": ["Perhaps"],
    "PLANTED: it must be": ["PLANTED: it must be", "Certainly"],
}


def make_items(n: int = 12) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "prompt": f"Q{i}: gold={'AB'[i % 2]}\nA. yes\nB. no\nAnswer:",
            "options": ["A", "B"],
            "answer": "AB"[i % 2],
        }
        for i in range(n)
    ]


def instruction_of(prompt: str) -> str:
    """The injected candidate: what precedes the client's prompt (blank line between)."""
    head, sep, _ = prompt.rpartition("\n\nQ")
    return head if sep else ""


def fake_model(path: str, body: dict):
    prompt = body.get("prompt", "")
    if "\nParaphrase:" in prompt:
        parent = prompt.rsplit("Instruction: ", 1)[1].split("\nParaphrase:")[0]
        texts = TREE.get(parent, [])[: body.get("n", 1)]
        choices = [
            {"index": i, "text": " " + t, "finish_reason": "stop"} for i, t in enumerate(texts)
        ]
        return JSONReply({"id": "p", "object": "text_completion", "choices": choices})
    gold = prompt.split("gold=")[1][0]
    other = "B" if gold == "A" else "A"
    instruction = instruction_of(prompt)
    index = int(prompt.split("\n\nQ")[-1].split(":")[0]) if "\n\nQ" in prompt else 0
    if "PLANTED" in instruction:
        answer, lp, alt = gold, -0.05, -3.0
    elif "must" in instruction and index % 4 < 2:
        answer, lp, alt = gold, -0.3, -1.4
    else:
        answer, lp, alt = "A", -0.2, -1.7
    pick = answer if answer == "A" else gold
    second = other if pick == gold else gold
    steps = [(" " + pick, lp, [(" " + pick, lp), (" " + second, alt)])]
    choice = {
        "index": 0,
        "text": " " + pick,
        "logprobs": legacy_steps(steps),
        "finish_reason": "stop",
    }
    return JSONReply({"id": f"c-{next(_ids)}", "object": "text_completion", "choices": [choice]})


@pytest.fixture(scope="module")
def gw(upstream_double, tmp_path_factory):
    gateway = start_gateway(
        upstream_double.base_url,
        tmp_path_factory.mktemp("popt") / "calib.db",
        models={"mcq": {"options": ["A", "B"]}},
        store_request_content=True,
        refit_enabled=False,
    )
    yield gateway
    gateway.server.stop()


@pytest.fixture
def client(gw, double) -> Iterator[httpx.Client]:
    double.reply = fake_model
    with httpx.Client(base_url=gw.url, timeout=30.0) as c:
        yield c


def start(client, model: str, **body) -> dict:
    payload = {"items": make_items(), "seeds": SEEDS, "k": 2, "m": 2, "n": 2, **body}
    r = client.post(f"/v1/calibration/models/{model}/prompt-optimizations", json=payload)
    assert r.status_code == 202, r.text
    return r.json()


def wait(client, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/v1/calibration/prompt-optimizations/{job_id}").json()
        if view["status"] in ("succeeded", "rejected", "failed"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {view}")


def test_job_finds_the_winner_and_activates_it_as_a_new_profile_version(client, gw):
    accepted = start(client, "opt-a")
    assert accepted["status"] in ("queued", "running")
    assert accepted["status_url"].endswith(accepted["id"])
    view = wait(client, accepted["id"])
    assert view["status"] == "succeeded", view
    result = view["result"]
    assert result["best_prompt"] == "PLANTED: it must be"
    assert result["activated"] is True and result["version"] == 1
    assert result["heldout"]["best"]["accuracy"] == 1.0
    assert result["heldout"]["active"]["accuracy"] < 1.0  # no prompt: always "A"

    profile = gw.app.state.store.active_profile("opt-a")
    assert profile.system_prompt == "PLANTED: it must be"
    history = gw.app.state.store.profile_history("opt-a")[0]
    assert "prompt optimization" in history.reason
    stored = history.metrics["prompt_optimization"]["history"]
    assert [h["prompt"] for h in stored] == [h["prompt"] for h in view["history"]]


def test_history_and_progress(client):
    view = wait(client, start(client, "opt-b")["id"])
    prompts = [h["prompt"] for h in view["history"]]
    assert prompts[:2] == SEEDS
    assert len(prompts) == len(set(prompts))  # duplicates never re-evaluated
    assert {h["round"] for h in view["history"]} <= {0, 1, 2}
    assert all(h["n"] == 8 for h in view["history"])  # 12 items: 8 search, 4 held out
    assert view["progress"]["evaluations"] == len(prompts)
    assert view["progress"]["phase"] == "done"
    assert view["items"] == {"search": 8, "heldout": 4}


def test_the_candidate_is_injected_as_a_prompt_prefix(client, double):
    wait(client, start(client, "opt-c")["id"])
    prompts = [r.json["prompt"] for r in double.requests if "gold=" in r.json.get("prompt", "")]
    assert any(p.startswith("PLANTED: it must be\n\nQ") for p in prompts)
    assert all(
        instruction_of(p) in {"", *SEEDS, *(t for ts in TREE.values() for t in ts)} for p in prompts
    )


def test_budget_is_respected(client, double):
    view = wait(client, start(client, "opt-d", budget=3)["id"])
    assert len(view["history"]) == 3
    assert view["result"]["search"]["stopped"] == "budget"


def test_rejection_is_recorded_with_its_reason(client, gw):
    gw.app.state.store.save_profile(
        __import__("calibrators").Profile(model="opt-e", system_prompt="PLANTED: it must be"),
        activate=True,
        reason="test",
    )
    view = wait(client, start(client, "opt-e")["id"])
    assert view["status"] == "rejected"
    assert view["result"]["activated"] is False
    assert "already in use" in view["result"]["reason"]
    assert len(gw.app.state.store.profile_history("opt-e")) == 1


def test_an_upstream_failure_fails_the_job_and_resume_finishes_it(client, double):
    calls = Counter()

    def flaky(path, body):
        calls["n"] += 1
        if 30 <= calls["n"] < 1000 and not calls["healed"]:
            return JSONReply({"error": {"message": "boom"}}, 500)
        return fake_model(path, body)

    double.reply = flaky
    job = start(client, "opt-f")
    failed = wait(client, job["id"])
    assert failed["status"] == "failed"
    assert "500" in failed["error"]
    done_before = len(failed["history"])
    assert done_before >= 1

    calls["healed"] = 1
    # Resumed the moment the job reads `failed`: its task may still be releasing the lease.
    # The gateway waits for that (a 409 here was the flake on a loaded machine), so the test
    # needs no sleep: `failed` is the condition that makes a job resumable.
    r = client.post(f"/v1/calibration/prompt-optimizations/{job['id']}/resume")
    assert r.status_code == 202, r.text
    view = wait(client, job["id"])
    assert view["status"] == "succeeded"
    assert view["history"][:done_before] == failed["history"]
    assert client.post(f"/v1/calibration/prompt-optimizations/{job['id']}/resume").status_code == (
        409
    )


def test_from_feedback_replays_stored_requests(client, double, gw):
    double.reply = fake_model
    ids = []
    for item in make_items(9):
        body = {"model": "mcq", "prompt": item["prompt"], "max_tokens": 2}
        answer = client.post("/v1/completions", json=body).json()
        ids.append((answer["calibration"]["id"], item["answer"]))
    for cid, label in ids:
        assert client.post("/v1/feedback", json={"id": cid, "label": label}).status_code == 200
    view = wait(client, start(client, "mcq", items=None, from_feedback=True)["id"])
    assert view["status"] == "succeeded", view
    assert view["items"]["search"] + view["items"]["heldout"] == 9
    assert view["result"]["best_prompt"] == "PLANTED: it must be"


def test_from_feedback_without_stored_content_is_refused(double, tmp_path):
    gateway = start_gateway(double.base_url, tmp_path / "c.db", refit_enabled=False)
    try:
        r = httpx.post(
            f"{gateway.url}/v1/calibration/models/m/prompt-optimizations",
            json={"from_feedback": True},
        )
        assert r.status_code == 409
        assert "store_request_content" in r.json()["error"]["message"]
    finally:
        gateway.server.stop()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"items": [{"prompt": "x", "options": ["A", "B"], "answer": "C"}]},
        {"items": make_items(), "k": 0},
        {"items": make_items(2)},
    ],
)
def test_bad_requests_are_422(client, body):
    r = client.post("/v1/calibration/models/m/prompt-optimizations", json=body)
    assert r.status_code == 422
    assert "error" in r.json()


def test_unknown_job_is_404(client):
    assert client.get("/v1/calibration/prompt-optimizations/nope").status_code == 404


# ------------------------------------------------------------------ crash and resume (job API)


def test_killed_job_resumes_without_reevaluating_and_equals_an_uninterrupted_run(gw, double):
    double.reply = fake_model
    store = gw.app.state.store
    items = [item_from_record(r, i) for i, r in enumerate(make_items())]
    search, heldout = split_items(items, 0.3, 0)
    config = JobConfig(seeds=SEEDS, k=2, m=2, n=2, upstream=double.base_url, served_model="x")

    async def run(job_id: str, fail_after: int | None = None) -> dict:
        async with httpx.AsyncClient(timeout=10) as http:
            return await run_job(store, job_id, client=http, fail_after=fail_after)

    reference = asyncio.run(run(create_job(store, "ref", "default", config, search, heldout)))

    job_id = create_job(store, "crash", "default", config, search, heldout)
    with pytest.raises(RuntimeError, match="simulated crash"):
        asyncio.run(run(job_id, fail_after=3))
    assert get_job(store, job_id)["status"] == "failed"
    assert len(get_job(store, job_id)["history"]) == 3

    double.requests.clear()
    resumed = asyncio.run(run(job_id))
    # The resumed run sent no prompt evaluated before the crash to the search items again (a
    # prompt may still go to the held-out items once), and each new one exactly once.
    sent = Counter(
        instruction_of(r.json["prompt"]) for r in double.requests if "gold=" in r.json["prompt"]
    )
    for h in resumed["history"][:3]:
        assert sent[h["prompt"]] in (0, len(heldout))
    for h in resumed["history"][3:]:
        assert sent[h["prompt"]] in (len(search), len(search) + len(heldout))
    assert resumed["status"] == reference["status"] == "succeeded"
    assert resumed["history"] == reference["history"]
    assert resumed["result"]["best_prompt"] == reference["result"]["best_prompt"]
    assert resumed["result"]["heldout"] == reference["result"]["heldout"]


def test_parse_paraphrases_is_robust():
    texts = [
        '1. The answer may be\n2) "The answer may be"\n- Possibly it is\n\n',
        "Paraphrase: Possibly it is",
        "The answer might be",
        "   ",
        "* Instruction: ignore me",
    ]
    assert parse_paraphrases(texts, "The answer might be", 5) == [
        "The answer may be",
        "Possibly it is",
    ]
    assert parse_paraphrases(["a\nb\nc"], "x", 2) == ["a", "b"]


def test_a_chat_item_gets_the_candidate_as_system_prompt(double):
    from service.prompt_opt import Replayer

    item = item_from_record(
        {"messages": [{"role": "user", "content": "Q?\nA. x\nB. y"}], "options": ["A", "B"],
         "answer": "A", "add_idk_option": True},
        0,
    )  # fmt: skip
    path, body = Replayer(None, "http://u/v1", "m").body(item, "Be careful.")
    assert path == "chat/completions"
    assert body["messages"] == [
        {"role": "system", "content": "Be careful."},
        {"role": "user", "content": "Q?\nA. x\nB. y\nC. I don't know"},
    ]
    assert item.options == ["A", "B", "C"] and item.idk_option == "C"
    assert chat_response  # the double's builders are shared with the other API tests
