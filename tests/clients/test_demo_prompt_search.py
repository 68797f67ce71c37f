"""The demo's prompt search against a real gateway whose upstream is the controllable double:
the summary it records, its held-out decision, the winner served afterwards, the printed table
and the report section.

The double is a tiny deterministic "model" of the demo's mcq questions: it names the right
capital when the injected instruction mentions "capital city" (the demo's task seed), and the
first listed choice otherwise; paraphrase requests get fixed paraphrases.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from rich.console import Console

from clients.demo.prompt_search import (
    SEEDS,
    TASK,
    SearchBudget,
    comparison_rows,
    job_items,
    prompt_section,
    prompt_table,
    run_prompt_search,
)
from clients.demo.questions import DemoItem, demo_items
from clients.report import render_html
from clients.sdk import CalibClient
from tests.conftest import Gateway, start_gateway
from tests.upstream_double import JSONReply, legacy_steps

_ids = itertools.count()
ITEMS: list[DemoItem] = [item for item in demo_items(0, 30) if item.task == "mcq"][:24]
GOLD = {item.prompt.rsplit("Q: ", 1)[1]: item for item in ITEMS}


def fake_model(listens: bool):  # type: ignore[no-untyped-def]
    def reply(path: str, body: dict) -> JSONReply:
        prompt = body.get("prompt", "")
        if "\nParaphrase:" in prompt:
            texts = [" Name the capital city or say I don't know.", " Be brief."]
            choices = [
                {"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)
            ]
            return JSONReply({"id": "p", "object": "text_completion", "choices": choices})
        item = GOLD[prompt.rsplit("Q: ", 1)[1]]
        assert item.options is not None
        knows = listens and "capital city" in prompt.split("Q: What is the capital of Germany")[0]
        pick = item.gold if knows else item.options[0]
        other = next(o for o in item.options if o != pick)
        lp, alt = (-0.05, -3.0) if knows else (-0.4, -1.2)
        steps = [(f" {pick}", lp, [(f" {pick}", lp), (f" {other}", alt)])]
        choice = {"index": 0, "text": f" {pick}", "logprobs": legacy_steps(steps)}
        return JSONReply(
            {"id": f"c-{next(_ids)}", "object": "text_completion", "choices": [choice]}
        )

    return reply


@pytest.fixture(scope="module")
def gw(upstream_double, tmp_path_factory) -> Iterator[Gateway]:
    gateway = start_gateway(
        upstream_double.base_url,
        tmp_path_factory.mktemp("demo-popt") / "calib.db",
        refit_enabled=False,
    )
    yield gateway
    gateway.server.stop()


def test_job_items_are_the_mcq_items_in_the_question_set_schema() -> None:
    records = job_items(ITEMS + [item for item in demo_items(0, 30) if item.task == "cloze"], 10)
    assert len(records) == 10
    for record, item in zip(records, ITEMS, strict=False):
        assert record["answer"] in record["options"] and record["answer"] == item.gold
        assert record["idk_option"] == "I don't know" and record["prompt"] == item.prompt


def test_a_winning_prompt_is_activated_recorded_and_served(gw, double) -> None:
    double.reply = fake_model(listens=True)
    with CalibClient(gw.url) as client:
        po = run_prompt_search(client, "demo-a", ITEMS, SearchBudget(budget=4, poll_s=0.05))
    assert po["status"] == "succeeded" and po["decision"] == "activated", po
    assert po["best_prompt"] == SEEDS[2]
    assert po["task"] == TASK and po["version"] == 1
    assert [c["prompt"] for c in po["candidates"]][:3] == list(SEEDS)
    assert len(po["candidates"]) <= 4
    for c in po["candidates"]:
        assert 0.0 <= c["accuracy"] <= 1.0 and 0.0 <= c["ece"] <= 1.0
    assert po["heldout"]["best"]["accuracy"] == 1.0
    assert po["heldout"]["active"]["accuracy"] < 1.0 and po["active_prompt"] is None
    assert po["items"]["search"] + po["items"]["heldout"] == len(ITEMS)

    # Replayed with the guided choices the demo serves mcq with.
    replayed = [r.json for r in double.requests if "\nA:" in r.json.get("prompt", "")]
    assert replayed
    for body in replayed:
        item = GOLD[body["prompt"].rsplit("Q: ", 1)[1]]
        assert body["structured_outputs"] == item.extra_body["structured_outputs"]

    # The winner is what the gateway now puts in front of the demo's mcq prompts.
    item = ITEMS[0]
    with CalibClient(gw.url) as client:
        client.complete(
            "demo-a", item.prompt, task=TASK, options=item.options, max_tokens=4, mode="options"
        )
    assert double.last.json["prompt"] == f"{SEEDS[2]}\n\n{item.prompt}"


def test_a_prompt_that_does_not_beat_none_held_out_is_rejected(gw, double) -> None:
    double.reply = fake_model(listens=False)
    with CalibClient(gw.url) as client:
        po = run_prompt_search(client, "demo-b", ITEMS, SearchBudget(budget=3, poll_s=0.05))
    assert po["status"] == "rejected" and po["decision"] == "rejected", po
    assert po["version"] is None and po["reason"]
    assert gw.app.state.store.active_profile("demo-b", TASK) is None


def test_the_table_and_the_report_section_show_candidates_and_the_decision(gw, double) -> None:
    double.reply = fake_model(listens=True)
    with CalibClient(gw.url) as client:
        po = run_prompt_search(client, "demo-c", ITEMS, SearchBudget(budget=3, poll_s=0.05))
    console = Console(record=True, width=200)
    console.print(prompt_table(po))
    text = console.export_text()
    assert "activated" in text and "held-out: best" in text and "held-out: in use" in text
    assert "capital city" in text

    page = render_html("demo", [("accuracy", [0.5])], ["mcq"], [], sections=[prompt_section(po)])
    section = page.split('<section id="prompt-optimization">', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr><td>", section)
    assert len(rows) == len(po["candidates"]) + 2
    assert "activated" in section


def test_an_item_whose_extra_body_would_change_the_replay_is_refused(gw) -> None:
    record = {**job_items(ITEMS, 1)[0], "extra_body": {"temperature": 1.0}}
    with CalibClient(gw.url) as client:
        response = client._http.post(
            "/calibration/models/demo-d/prompt-optimizations",
            json={"items": [record] * 4, "task": TASK},
        )
    assert response.status_code == 422
    error = response.json()["error"]
    assert "extra_body" in error["message"] and error["param"] == "items"


def test_a_job_stopped_by_an_upstream_error_is_resumed_and_decides(gw, double) -> None:
    calls = {"n": 0}
    answer = fake_model(listens=True)

    def flaky(path: str, body: dict) -> JSONReply:
        calls["n"] += 1
        if calls["n"] == 30:  # one failed request stops the job (as a timeout would)
            return JSONReply({"error": {"message": "engine overloaded"}}, 500)
        return answer(path, body)

    double.reply = flaky
    with CalibClient(gw.url) as client:
        po = run_prompt_search(client, "demo-e", ITEMS, SearchBudget(budget=4, poll_s=0.05))
    assert calls["n"] > 30
    assert po["status"] == "succeeded" and po["decision"] == "activated", po
    assert po["error"] is None


def test_a_job_that_keeps_failing_is_reported_as_not_activated(gw, double) -> None:
    double.reply = lambda path, body: JSONReply({"error": {"message": "down"}}, 500)
    with CalibClient(gw.url) as client:
        po = run_prompt_search(
            client, "demo-f", ITEMS, SearchBudget(budget=3, poll_s=0.05, resumes=1)
        )
    assert po["status"] == "failed" and po["decision"] == "rejected"
    assert "did not finish" in po["reason"] and "500" in po["error"]
    assert po["candidates"] == [] and po["heldout"] == {"best": None, "active": None}
    assert comparison_rows(po) == []


def test_the_served_knobs_of_a_task_without_a_profile_are_none(gw, double) -> None:
    from clients.demo.runner import _served

    double.reply = fake_model(listens=True)
    with CalibClient(gw.url) as client:
        assert _served(client, "never-refit", TASK) is None
        run_prompt_search(client, "demo-g", ITEMS, SearchBudget(budget=3, poll_s=0.05))
        served = _served(client, "demo-g", TASK)
    assert served is not None and served["system_prompt"] == SEEDS[2]
    assert served["method"] == "none" and served["version"] == 1
