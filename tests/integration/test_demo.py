"""`calib demo` on the real engine: the whole loop, its outputs, and its report in a browser.

Run small (n=40) so it fits in CI; the quality numbers of a full run are in the README.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from calibrators import Evaluation, better
from clients.demo.runner import ROWS, TASKS, DemoOptions, run_demo
from tests.browser import file_url, inspect_page

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def demo_run(engine, vlm_engine, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    options = DemoOptions(
        out_dir=out,
        engine_url=engine.base_url,
        model=engine.model,
        vlm_url=vlm_engine.base_url,
        vlm_model=vlm_engine.model,
        n=40,
    )
    summary = run_demo(options, Console(record=True, width=120))
    return out, summary


def test_summary_json_has_every_number_for_every_task(demo_run) -> None:
    out, _ = demo_run
    written = json.loads((out / "summary.json").read_text())
    assert written["tasks"].keys() == set(TASKS)
    for task in TASKS:
        stats = written["tasks"][task]
        assert stats["n"] > 0 and stats["n_scored"] > 0
        for key in ("accuracy", "ece_raw", "ece_calibrated", "brier_raw", "brier_calibrated"):
            assert 0.0 <= stats[key] <= 1.0, (task, key, stats[key])
    assert written["counts"]["labels_posted"] > 0
    assert set(written["timings_s"]) >= {"answer_training_s", "answer_heldout_s", "total_s"}
    assert {t: s["modality"] for t, s in written["tasks"].items()} == {
        "mcq": "text",
        "cloze": "text",
        "vision": "image",
    }
    assert written["models"]["vision"] == "tiny-vlm"


def test_each_refit_reports_its_outcome_and_activated_profiles_serve_the_held_out_part(
    demo_run,
) -> None:
    out, summary = demo_run
    answers = [json.loads(line) for line in (out / "held_out_answers.jsonl").open()]
    for task in TASKS:
        outcome = summary["refits"][task]
        assert isinstance(outcome["activated"], bool) and outcome["reason"]
        served = [a["calibration"] for a in answers if a["task"] == task and a["calibration"]]
        if outcome["activated"]:
            assert all(c["profile_version"] >= 1 for c in served)
            assert all(c["method"] != "none" for c in served)
        else:
            assert all(c["method"] == "none" for c in served)


def test_unanswerable_questions_are_graded_against_the_idk_option(demo_run) -> None:
    out, _ = demo_run
    answers = [json.loads(line) for line in (out / "held_out_answers.jsonl").open()]
    invented = [a for a in answers if not a["answerable"] and a["task"] != "vision"]
    assert invented, "the held-out part mixes in invented countries"
    for a in invented:
        picked_idk = bool(a["calibration"]) and a["calibration"]["answer"] == "I don't know"
        assert a["correct"] == picked_idk
    for a in (a for a in answers if not a["answerable"] and a["task"] == "vision"):
        picked_idk = bool(a["calibration"]) and a["calibration"]["answer"] == "E"
        assert a["correct"] == picked_idk  # nothing in the picture: "E. I don't know"


def test_report_renders_in_a_real_browser_with_all_figures(demo_run) -> None:
    out, _ = demo_run
    page = inspect_page(file_url(out / "report.html"))
    assert page.errors == []
    assert page.rows == len(ROWS)
    assert len(page.images) == 3 * len(TASKS)
    assert all(image["complete"] and image["width"] > 0 for image in page.images)
    for task in TASKS:
        assert (out / f"reliability_{task}.png").stat().st_size > 0
        assert (out / f"reliability_{task}.svg").read_text().lstrip().startswith("<?xml")


def test_the_prompt_search_decides_on_held_out_items_and_its_winner_is_served(demo_run) -> None:
    out, summary = demo_run
    po = json.loads((out / "summary.json").read_text())["prompt_optimization"]
    assert po["task"] == "mcq" and po["status"] in ("succeeded", "rejected"), po
    assert po["decision"] == ("activated" if po["status"] == "succeeded" else "rejected")
    assert po["candidates"] and len(po["candidates"]) <= 5
    for c in po["candidates"]:
        assert 0.0 <= c["accuracy"] <= 1.0 and 0.0 <= c["ece"] <= 1.0
    for side in ("best", "active"):
        assert po["heldout"][side]["n"] == po["items"]["heldout"] > 0
    served = summary["served_profiles"]["mcq"]
    if po["decision"] == "activated":
        assert served["system_prompt"] == po["best_prompt"]
        best, active = po["heldout"]["best"], po["heldout"]["active"]
        assert better(
            Evaluation(best["accuracy"], best["ece"], best["n"]),
            Evaluation(active["accuracy"], active["ece"], active["n"]),
        )
    else:
        assert served is None or not served["system_prompt"]
    assert "prompt_search_s" in summary["timings_s"]
    page = (out / "report.html").read_text()
    assert 'id="prompt-optimization"' in page and po["decision"] in page
