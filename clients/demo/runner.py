"""`calib demo`: start the stack, run the calibration loop on real questions, report before/after.

1. start (or reuse) the embedded engines (Gemma for text, the tiny VLM for images) and a gateway
   on SQLite in the output folder that routes each model to its engine;
2. search the mcq system prompt on the mcq training items (the gateway's prompt-optimization
   job, small budget; `prompt_search.py`): a winner on the job's held-out split becomes the
   profile's system prompt, so everything after is answered with it;
3. answer the training part through the gateway (raw = calibrated: no calibrator yet);
4. post the gold labels as feedback and refit each task (champion/challenger, LTT threshold):
   temperature and threshold are fitted for the prompt in use;
5. answer the held-out part with the new profiles (all three knobs);
6. print the before/after table, write summary.json, report.html and the figures.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the dependencies
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from calibrators import reliability_bins
from clients.report import (
    Figure,
    confidence_histogram,
    reliability_diagram,
    render_html,
    risk_coverage_plot,
)
from clients.sdk import CalibClient, NotFoundError

from .evaluate import arrays, task_summary
from .loop import Answered, ask_all, post_feedback
from .prompt_search import (
    SearchBudget,
    headline,
    knobs_text,
    prompt_section,
    prompt_table,
    run_prompt_search,
)
from .questions import DemoItem, demo_items, split, vision_items
from .stack import Stack

TASKS = ("mcq", "cloze", "vision")
MODALITY = {"mcq": "text", "cloze": "text", "vision": "image"}
ROWS: tuple[tuple[str, str], ...] = (
    ("held-out answers", "n"),
    ("method", "method"),
    ("temperature", "temperature"),
    ("accuracy", "accuracy"),
    ("ECE raw (10 bins)", "ece_raw"),
    ("ECE calibrated", "ece_calibrated"),
    ("Brier raw", "brier_raw"),
    ("Brier calibrated", "brier_calibrated"),
    ("AUROC (calibrated)", "auroc_calibrated"),
    ("threshold", "threshold"),
    ("coverage at threshold", "coverage"),
    ("selective risk at threshold", "selective_risk"),
    ("abstention rate, answerable", "abstention_rate_answerable"),
    ("abstention rate, unanswerable", "abstention_rate_unanswerable"),
)


@dataclass
class DemoOptions:
    out_dir: Path
    gateway_url: str | None = None
    engine_url: str | None = None
    api_key: str | None = None
    model: str = "gemma-3-270m"
    vision: bool = True
    """Also run the image task on the tiny VLM (`calib engine … --model tiny-vlm`)."""
    vlm_url: str | None = None
    vlm_model: str = "tiny-vlm"
    n: int = 200
    seed: int = 0
    train_fraction: float = 0.6
    target_risk: float = 0.3
    delta: float = 0.1
    concurrency: int = 8
    keep: bool = False
    prompt_search: bool = True
    """Search the mcq system prompt on the training part first (the third knob)."""
    prompt_budget: int = 5
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tasks(self) -> tuple[str, ...]:
        return TASKS if self.vision else tuple(t for t in TASKS if t != "vision")

    def model_of(self, task: str) -> str:
        return self.vlm_model if task == "vision" else self.model


def gateway_config(options: DemoOptions) -> dict[str, Any]:
    """The gateway's YAML config for the demo: refits on demand, the demo's risk target."""
    models: dict[str, Any] = {options.model: {"abstain": "annotate", "top_logprobs": 20}}
    if options.vision and options.vlm_url:
        models[options.vlm_model] = {
            "upstream": options.vlm_url,
            "abstain": "annotate",
            "top_logprobs": 20,
        }
    return {
        "refit_enabled": False,
        "refit_min_labels": 30,
        # half of the labels choose the threshold: LTT needs enough of them to certify anything
        "refit_holdout_fraction": 0.5,
        "refit_target_risk": options.target_risk,
        "refit_delta": options.delta,
        "models": models,
    }


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _ask(options: DemoOptions, url: str, items: list, console: Console, what: str) -> list:
    """Answer `items` (each task through its own model), keeping the items' order."""
    answered: dict[str, Answered] = {}
    with _progress(console) as progress:
        bar = progress.add_task(what, total=len(items))
        for model in dict.fromkeys(options.model_of(item.task) for item in items):
            of_model = [item for item in items if options.model_of(item.task) == model]
            for a in asyncio.run(
                ask_all(
                    url,
                    model,
                    of_model,
                    concurrency=options.concurrency,
                    api_key=options.api_key,
                    on_done=lambda: progress.advance(bar),
                )
            ):
                answered[a.item.id] = a
    return [answered[item.id] for item in items]


def _timed(options: DemoOptions, name: str, run: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = run()
    options.timings[name] = round(time.perf_counter() - start, 2)
    return result


def run_loop(options: DemoOptions, gateway_url: str, console: Console) -> dict[str, Any]:
    """Steps 2–5 against a running gateway; returns the summary written to summary.json."""
    items: list[DemoItem] = demo_items(options.seed, options.n)
    if options.vision:
        items += vision_items(options.seed, options.n)
    train, test = split(items, options.train_fraction)
    console.print(
        f"{len(train)} training and {len(test)} held-out questions "
        f"(tasks: mcq = capital among choices + invented countries, cloze = free-form"
        + (", vision = image questions to the tiny VLM" if options.vision else "")
        + ")"
    )
    prompt_optimization = None
    if options.prompt_search and "mcq" in options.tasks:
        with CalibClient(gateway_url, options.api_key) as client, _progress(console) as progress:
            bar = progress.add_task("prompt search  ", total=options.prompt_budget + 2)

            def show(state: dict[str, Any]) -> None:
                done = state.get("evaluations", 0) + (2 if state.get("phase") == "done" else 0)
                progress.update(bar, completed=done, total=state.get("planned_evaluations", 0) + 2)

            prompt_optimization = _timed(
                options,
                "prompt_search_s",
                lambda: run_prompt_search(
                    client, options.model, train, SearchBudget(budget=options.prompt_budget), show
                ),
            )
        console.print(headline(prompt_optimization))
    trained = _timed(
        options,
        "answer_training_s",
        lambda: _ask(options, gateway_url, train, console, "training part "),
    )
    refits: dict[str, Any] = {}
    with CalibClient(gateway_url, options.api_key) as client:
        posted = _timed(options, "feedback_s", lambda: post_feedback(client, trained))
        console.print(f"posted {posted} labels as feedback")
        for task in options.tasks:
            model = options.model_of(task)
            refits[task] = _timed(
                options, f"refit_{task}_s", functools.partial(client.refit, model, task=task)
            )
            outcome = refits[task]
            console.print(f"refit {task}: {_outcome_text(outcome)}")
    held_out = _timed(
        options,
        "answer_heldout_s",
        lambda: _ask(options, gateway_url, test, console, "held-out part "),
    )
    by_task = {task: [a for a in held_out if a.item.task == task] for task in options.tasks}
    with CalibClient(gateway_url, options.api_key) as client:
        served = {task: _served(client, options.model_of(task), task) for task in options.tasks}
    summary = {
        "model": options.model,
        "models": {task: options.model_of(task) for task in options.tasks},
        "seed": options.seed,
        "counts": {"train": len(train), "held_out": len(test), "labels_posted": posted},
        "tasks": {
            task: {"modality": MODALITY[task], **task_summary(answers)}
            for task, answers in by_task.items()
        },
        "refits": refits,
        "served_profiles": served,
        "settings": {"target_risk": options.target_risk, "delta": options.delta},
    }
    if prompt_optimization is not None:
        summary["prompt_optimization"] = prompt_optimization
    _write_outputs(options, summary, by_task, console)
    return summary


def _served(client: CalibClient, model: str, task: str) -> dict[str, Any] | None:
    """The knobs the held-out part was answered with: the active profile's system prompt,
    calibrator and threshold (None when the task has no active profile)."""
    try:
        active = client.profile(model, task).get("active")
    except NotFoundError:  # no version stored yet (e.g. too few labels to refit)
        return None
    if not active:
        return None
    return {
        key: active.get(key)
        for key in ("version", "system_prompt", "method", "temperature", "threshold")
    }


def _outcome_text(outcome: dict[str, Any]) -> str:
    activated = outcome.get("activated")
    reason = outcome.get("reason", "")
    version = outcome.get("version")
    return f"{'activated v' + str(version) if activated else 'not activated'} — {reason}"


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="held-out questions, after one refit", show_lines=False)
    table.add_column("metric")
    tasks = list(summary["tasks"])
    for task in tasks:
        table.add_column(task, justify="right")
    for label, key in ROWS:
        values = [summary["tasks"][task].get(key) for task in tasks]
        table.add_row(
            label,
            *("—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values),
        )
    return table


def _figures(by_task: dict[str, list[Answered]], summary: dict[str, Any]) -> list[Figure]:
    figures: list[Figure] = []
    for task, answers in by_task.items():
        data = arrays(answers)
        stats = summary["tasks"][task]
        raw_bins = [b.to_dict() for b in reliability_bins(data["raw"], data["correct"])]
        cal_bins = [b.to_dict() for b in reliability_bins(data["calibrated"], data["correct"])]
        figures.append(
            reliability_diagram(
                raw_bins,
                cal_bins,
                title=f"{task} (held-out)",
                ece_raw=stats["ece_raw"],
                ece_calibrated=stats["ece_calibrated"],
                name=f"reliability_{task}",
            )
        )
        point = None
        if stats["threshold"] is not None and stats["coverage"] is not None:
            point = (stats["coverage"], stats["selective_risk"])
        figures.append(
            risk_coverage_plot(
                {
                    "raw": (data["raw"], data["correct"]),
                    "calibrated": (data["calibrated"], data["correct"]),
                },
                title=f"{task} (held-out)",
                threshold_point=point,
                name=f"risk_coverage_{task}",
            )
        )
        figures.append(
            confidence_histogram(
                {"raw": data["raw"], "calibrated": data["calibrated"]},
                title=f"{task} (held-out)",
                name=f"confidence_{task}",
            )
        )
    return figures


def _write_outputs(
    options: DemoOptions,
    summary: dict[str, Any],
    by_task: dict[str, list[Answered]],
    console: Console,
) -> None:
    out = options.out_dir
    figures = _figures(by_task, summary)
    for fig in figures:
        (out / f"{fig.name}.png").write_bytes(fig.png)
        (out / f"{fig.name}.svg").write_bytes(fig.svg)
    tasks = list(summary["tasks"])
    rows = [(label, [summary["tasks"][t].get(key) for t in tasks]) for label, key in ROWS]
    notes = {
        "model": ", ".join(f"{t}: {m}" for t, m in summary["models"].items()),
        "labels posted": str(summary["counts"]["labels_posted"]),
        "risk target": f"α = {options.target_risk}, δ = {options.delta} (Learn-Then-Test)",
    }
    po = summary.get("prompt_optimization")
    if po is not None:
        notes["system prompt search (mcq)"] = headline(po)
    mcq = (summary.get("served_profiles") or {}).get("mcq")
    if mcq is not None:
        notes["mcq served with"] = knobs_text(mcq)
    sections = [prompt_section(po)] if po is not None else []
    page = render_html(
        "mllm-calib demo: calibration before/after", rows, tasks, figures, notes, sections
    )
    (out / "report.html").write_text(page, encoding="utf-8")
    answers = [
        {
            "id": a.item.id,
            "task": a.item.task,
            "subject": a.item.subject,
            "gold": a.item.gold,
            "answerable": a.item.answerable,
            "text": a.text,
            "correct": a.correct,
            "calibration": a.calibration.__dict__ if a.calibration else None,
        }
        for answers in by_task.values()
        for a in answers
    ]
    (out / "held_out_answers.jsonl").write_text(
        "".join(json.dumps(a) + "\n" for a in answers), encoding="utf-8"
    )
    if po is not None:
        console.print(prompt_table(po))
    console.print(summary_table(summary))
    if mcq is not None:
        console.print(f"mcq served with {knobs_text(mcq)}")
    console.print(f"report: {out / 'report.html'}")
    console.print(f"summary: {out / 'summary.json'}")
    console.print(f"figures: {', '.join(str(out / (f.name + '.png')) for f in figures)}")


def run_demo(options: DemoOptions, console: Console | None = None) -> dict[str, Any]:
    """The whole demo; stops what it started unless `keep` (also on Ctrl-C)."""
    console = console or Console()
    options.out_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(options.out_dir, log=console.print)
    started = time.perf_counter()
    try:
        if options.gateway_url:
            gateway_url = options.gateway_url
        else:
            _timed(options, "engine_ready_s", lambda: stack.start_engine(options.engine_url))
            if options.vision:
                options.vlm_url = _timed(
                    options, "vlm_ready_s", lambda: stack.start_vlm(options.vlm_url)
                )
            config = options.out_dir / "gateway.yaml"
            config.write_text(yaml.safe_dump(gateway_config(options)), encoding="utf-8")
            db_url = f"sqlite:///{(options.out_dir / 'calib.db').resolve()}"
            gateway_url = _timed(
                options, "gateway_ready_s", lambda: stack.start_gateway(config, db_url)
            )
            console.print(f"gateway: {gateway_url}/v1 (engine {stack.engine_url})")
        summary = run_loop(options, gateway_url, console)
        options.timings["total_s"] = round(time.perf_counter() - started, 2)
        summary["timings_s"] = options.timings
        (options.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"wall times (s): {options.timings}")
        return summary
    finally:
        if options.keep:
            console.print(f"--keep: leaving the stack running (gateway {stack.gateway_url})")
        else:
            stack.stop()
