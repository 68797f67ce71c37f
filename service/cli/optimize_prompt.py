"""`calib optimize-prompt`: run (or resume) a prompt-optimization job from the command line.

    calib optimize-prompt --model M --dataset items.jsonl [--task T] [--k 5 --m 5 --n 10]
        [--budget N] [--paraphraser URL[,MODEL]] [--db URL] [--upstream URL]
    calib optimize-prompt --model M --from-feedback      # needs store_request_content
    calib optimize-prompt --resume popt-…                # continue a failed/killed job

The job is the one the admin endpoint runs (`service.prompt_opt`), with its state in the store
after every evaluation; a progress bar shows the evaluations. Exit status: 0 when the job
finished (activated or rejected: both are printed with the reason), 1 when it failed (resume it
with `--resume ID`), 2 for bad arguments.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.prompt_opt import (
    DEFAULT_SEEDS,
    JobConfig,
    create_job,
    get_job,
    items_from_feedback,
    read_items,
    run_job,
    split_items,
)
from service.settings import load_settings
from service.store import Store, StoreError

_out = Console()
_err = Console(stderr=True)


def optimize_prompt(
    model: Annotated[str | None, typer.Option("--model", help="Model to optimize.")] = None,
    task: Annotated[str, typer.Option("--task", help="Profile task.")] = "default",
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="Labeled items (JSONL, docs/datasets.md).")
    ] = None,
    from_feedback: Annotated[
        bool, typer.Option("--from-feedback", help="Replay labeled stored predictions.")
    ] = False,
    k: Annotated[int, typer.Option("--k", min=1, help="Prompts kept per round.")] = 5,
    m: Annotated[int, typer.Option("--m", min=1, help="Paraphrases per kept prompt.")] = 5,
    n: Annotated[int, typer.Option("--n", min=0, help="Paraphrase rounds.")] = 10,
    budget: Annotated[
        int | None, typer.Option("--budget", min=1, help="Most evaluations in all.")
    ] = None,
    seeds: Annotated[
        list[str] | None, typer.Option("--seed-prompt", help="Seed prompt (repeatable).")
    ] = None,
    holdout: Annotated[float, typer.Option("--holdout", min=0.01, max=0.99)] = 0.3,
    split_seed: Annotated[int, typer.Option("--split-seed")] = 0,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 8,
    paraphraser: Annotated[
        str | None,
        typer.Option("--paraphraser", help="URL[,MODEL] of an OpenAI-compatible endpoint."),
    ] = None,
    paraphraser_api: Annotated[
        str, typer.Option("--paraphraser-api", help="completions (base models) or chat.")
    ] = "completions",
    db: Annotated[str | None, typer.Option("--db", help="Store URL.")] = None,
    upstream: Annotated[str | None, typer.Option("--upstream", help="Upstream base URL.")] = None,
    config: Annotated[str | None, typer.Option("--config", help="YAML settings file.")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Job id to resume.")] = None,
) -> None:
    """Search for the system prompt with the best accuracy/ECE; activate it if it wins held out.

    Examples:

      calib optimize-prompt --model gemma-3-270m --dataset questions.jsonl --budget 20

      calib optimize-prompt --model my-vlm --from-feedback --k 3 --m 3 --n 4

      calib optimize-prompt --model my-vlm --resume 7
    """
    settings = load_settings(db=db, upstream=upstream, config=config)
    try:
        store = Store.open(settings.database_url)
    except StoreError as error:
        _err.print(f"[red]cannot open the store {settings.database_url}: {error}[/red]")
        raise typer.Exit(1) from None

    if resume is None:
        if model is None or (dataset is None) == (not from_feedback):
            _err.print("give --model and exactly one of --dataset and --from-feedback")
            raise typer.Exit(2)
        if paraphraser_api not in ("completions", "chat"):
            _err.print("--paraphraser-api must be completions or chat")
            raise typer.Exit(2)
        if from_feedback:
            if not settings.store_request_content:
                _err.print(
                    "[yellow]store_request_content is off: predictions made without it cannot "
                    "be replayed (docs/prompt-optimization.md)[/yellow]"
                )
            items = items_from_feedback(store, model, task)
        else:
            assert dataset is not None
            if not dataset.is_file():
                _err.print(f"no such file: {dataset}")
                raise typer.Exit(2)
            items = read_items(dataset)
        search, heldout = split_items(items, holdout, split_seed)
        if len(search) < 2 or not heldout:
            _err.print(f"too few labeled options items ({len(items)}) to search and hold out")
            raise typer.Exit(2)
        model_config = settings.model_settings(model)
        base = (model_config.upstream or settings.upstream).rstrip("/")
        p_url, _, p_model = (paraphraser or "").partition(",")
        job_config = JobConfig(
            seeds=list(seeds or DEFAULT_SEEDS),
            k=k,
            m=m,
            n=n,
            budget=budget,
            holdout_fraction=holdout,
            seed=split_seed,
            concurrency=concurrency,
            source="feedback" if from_feedback else "dataset",
            upstream=base,
            served_model=model_config.served_name or model,
            system_prompt_policy=model_config.system_prompt_policy,
            configured_prompt=model_config.system_prompt,
            paraphraser_url=(p_url or base).rstrip("/"),
            paraphraser_model=p_model or model_config.served_name or model,
            paraphraser_api=paraphraser_api,
        )
        job_id = create_job(store, model, task, job_config, search, heldout)
        _out.print(f"job [bold]{job_id}[/bold]: {len(search)} search + {len(heldout)} held-out")
    else:
        job_id = resume
        _out.print(f"resuming job [bold]{job_id}[/bold]")

    view = get_job(store, job_id)
    total = view["progress"]["planned_evaluations"]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_out,
        transient=False,
    ) as bar:
        tid = bar.add_task("search", total=total, completed=view["progress"]["evaluations"])

        def on_progress(event: dict[str, Any]) -> None:
            bar.update(tid, completed=event["evaluations"], description=event["phase"])

        async def go() -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=settings.upstream_timeout_s) as client:
                return await run_job(
                    store,
                    job_id,
                    client=client,
                    on_progress=on_progress,
                    upstream_keys=settings.upstream_keys(view["model"]),
                )

        try:
            view = asyncio.run(go())
        except Exception as error:
            bar.stop()
            _err.print(f"[red]job {job_id} failed: {error}[/red]")
            _err.print(f"resume with: calib optimize-prompt --resume {job_id}")
            raise typer.Exit(1) from None
        bar.update(tid, total=len(view["history"]), completed=len(view["history"]))
    _report(view)


def _report(view: dict[str, Any]) -> None:
    table = Table(title=f"prompt optimization {view['id']} ({view['model']}/{view['task']})")
    for column in ("round", "accuracy", "ECE", "prompt"):
        table.add_column(column)
    for h in sorted(view["history"], key=lambda h: (-h["accuracy"], h["ece"] or 0.0)):
        ece = "—" if h["ece"] is None else f"{h['ece']:.3f}"
        table.add_row(str(h["round"]), f"{h['accuracy']:.3f}", ece, h["prompt"])
    _out.print(table)
    result = view["result"] or {}
    held = result.get("heldout", {})
    _out.print(f"best: [bold]{result.get('best_prompt')!r}[/bold]")
    for name in ("best", "active"):
        e = held.get(name) or {}
        if e:
            _out.print(f"  held-out {name}: accuracy {e['accuracy']:.3f}, ECE {e['ece']}")
    verdict = f"activated as version {result.get('version')}" if result.get("activated") else "kept"
    _out.print(f"{view['status']}: {verdict} — {result.get('reason')}")
