"""The demo's third knob: a small-budget system-prompt search on the mcq training part.

The gateway's own prompt-optimization job (`POST /v1/calibration/models/{model}/
prompt-optimizations`, docs/prompt-optimization.md) gets the mcq training items inline, searches
candidates on its search split, and compares the best with the prompt in use (none) on its
held-out split; only a winner there becomes the active profile's system prompt. The demo then
answers the training part with whatever is active, so the refit fits the temperature and the
threshold for the prompt that is served.

Why mcq: its items carry the right option, which is what the job scores (accuracy and ECE of
the option distribution); cloze answers have no options, and the vision task goes to another
model whose chat prompts already carry their instruction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from clients.report import Section
from clients.sdk import CalibClient

from .questions import DemoItem

#: The task whose prompt is searched.
TASK = "mcq"
#: The paper's two seeds plus one instruction written for this task.
SEEDS = (
    "The answer might be",
    "The answer must be",
    "Answer with the capital city. If the country does not exist, answer I don't know.",
)


@dataclass(frozen=True)
class SearchBudget:
    """Bounds on the search: at most `budget` candidates on at most `max_items` items."""

    budget: int = 5
    k: int = 2
    m: int = 2
    n: int = 1
    max_items: int = 160
    holdout_fraction: float = 0.3
    timeout_s: float = 600.0
    poll_s: float = 1.0
    resumes: int = 2  # a job that failed (e.g. an upstream timeout) continues where it stopped


def job_items(items: list[DemoItem], limit: int) -> list[dict[str, Any]]:
    """The mcq training items in the question-set schema the job reads (docs/datasets.md)."""
    chosen = [item for item in items if item.task == TASK][:limit]
    return [
        {
            "id": item.id,
            "prompt": item.prompt,
            "options": item.options,
            "answer": item.gold,
            "idk_option": item.idk_option,
            "answerable": item.answerable,
            # replayed with the guided choices it is served with (`structured_outputs`)
            **({"extra_body": item.extra_body} if item.extra_body else {}),
        }
        for item in chosen
    ]


def summarize_job(job: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What `summary.json` records under `prompt_optimization` from the job's final state."""
    result = job.get("result") or {}
    heldout = result.get("heldout") or {}
    activated = bool(result.get("activated"))
    status = job.get("status")
    if result:
        reason = result.get("reason")
    else:
        reason = f"the search did not finish ({status}): {job.get('error')}"
    return {
        "task": job.get("task", TASK),
        "job": job.get("id"),
        "status": status,
        "decision": "activated" if activated else "rejected",
        "reason": reason,
        "best_prompt": result.get("best_prompt"),
        "active_prompt": result.get("active_prompt"),
        "version": result.get("version"),
        "candidates": [
            {
                "prompt": c["prompt"],
                "accuracy": c["accuracy"],
                "ece": c["ece"],
                "n": c["n"],
                "round": c["round"],
            }
            for c in job.get("history") or []
        ],
        "heldout": {
            "best": heldout.get("best"),
            "active": heldout.get("active"),
        },
        "items": job.get("items"),
        "error": job.get("error"),
        "seconds": round(seconds, 2),
    }


def run_prompt_search(
    client: CalibClient,
    model: str,
    items: list[DemoItem],
    budget: SearchBudget | None = None,
    on_progress: Callable[[dict[str, Any]], None] = lambda progress: None,
) -> dict[str, Any]:
    """Start the job on the mcq training items, wait for its decision, return its summary.

    A job that fails (an upstream error stops it) is resumed up to ``budget.resumes`` times.

    ``on_progress`` gets the job's `progress` object (phase, evaluations, planned) at each poll.
    """
    budget = budget or SearchBudget()
    started = time.perf_counter()
    job = client.optimize_prompt(
        model,
        task=TASK,
        items=job_items(items, budget.max_items),
        seeds=list(SEEDS),
        k=budget.k,
        m=budget.m,
        n=budget.n,
        budget=budget.budget,
        holdout_fraction=budget.holdout_fraction,
    )
    deadline = started + budget.timeout_s
    resumes = budget.resumes
    while job["status"] not in ("succeeded", "rejected", "failed") or (
        job["status"] == "failed" and resumes > 0
    ):
        if job["status"] == "failed":
            resumes -= 1
            job = client.resume_prompt_optimization(job["id"])
            continue
        if time.perf_counter() > deadline:
            job = {**job, "status": "timeout", "error": f"no decision in {budget.timeout_s} s"}
            break
        time.sleep(budget.poll_s)
        job = client.prompt_optimization(job["id"])
        on_progress(job.get("progress") or {})
    return summarize_job(job, time.perf_counter() - started)


def _short(prompt: str | None, width: int = 70) -> str:
    if not prompt:
        return "(no system prompt)"
    return prompt if len(prompt) <= width else prompt[: width - 1] + "…"


def comparison_rows(po: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    """(label, [accuracy, ECE, n]) for each candidate of the search and the held-out pair."""
    rows: list[tuple[str, list[Any]]] = [
        (f"search r{c['round']}: {_short(c['prompt'])}", [c["accuracy"], c["ece"], c.get("n")])
        for c in po["candidates"]
    ]
    for key, label in (("best", "held-out: best"), ("active", "held-out: in use")):
        value = po["heldout"].get(key)
        if value is None:  # the search did not get that far (headline() says why)
            continue
        prompt = po["best_prompt"] if key == "best" else po["active_prompt"]
        rows.append(
            (
                f"{label}: {_short(prompt)}",
                [value.get("accuracy"), value.get("ece"), value.get("n")],
            )
        )
    return rows


def headline(po: dict[str, Any]) -> str:
    """One line: the decision and why."""
    return f"prompt search on {po['task']} ({po['seconds']} s): {po['decision']} — {po['reason']}"


def prompt_table(po: dict[str, Any]) -> Table:
    """The printed table: candidates on the search split, then the held-out decision."""
    table = Table(title=f"system-prompt search ({po['task']}): {po['decision']}")
    for name, justify in (("candidate", "left"), ("accuracy", "right"), ("ECE", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("n", justify="right")
    for label, values in comparison_rows(po):
        table.add_row(
            label,
            *("—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values),
        )
    return table


def prompt_section(po: dict[str, Any]) -> Section:
    """The report's section: the same rows, the decision as its text."""
    return Section(
        id="prompt-optimization",
        title=f"System-prompt search ({po['task']}): {po['decision']}",
        columns=("accuracy", "ECE", "n"),
        rows=comparison_rows(po),
        first="candidate",
        text=headline(po),
    )


def knobs_text(served: dict[str, Any]) -> str:
    """The three knobs of a served profile in one line."""
    temperature = served.get("temperature")
    threshold = served.get("threshold")
    return (
        f"system prompt {_short(served.get('system_prompt'))!s}, "
        f"method {served.get('method')}"
        + (f" (T = {temperature:.3f})" if isinstance(temperature, float) else "")
        + (f", abstain threshold {threshold:.3f}" if isinstance(threshold, float) else "")
        + f" (profile v{served.get('version')})"
    )
