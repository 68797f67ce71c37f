"""`calib refit` and `calib profile ...`: refits and profile versions, straight on the store.

For cron or a Kubernetes CronJob: `calib refit` runs the same job as the gateway's scheduler and
admin endpoint (`service.refit.run_refit`), under the same database lease, so it never races a
gateway replica; running gateways serve an activated version within seconds (`ProfileCache`).

    calib refit                         # every (model, task) that has labels
    calib refit --model M [--task T]    # one model (all its labeled tasks), or one pair
    calib profile history --model M [--task T]
    calib profile rollback --model M --version 3 [--task T]

Exit status: 0 when every attempt ran (activated, rejected or not enough labels; a pair whose
lease another replica holds is skipped), 1 when an attempt failed or the store is unreachable,
2 for bad arguments.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from service.profile_operations import rollback as rollback_version
from service.settings import load_settings
from service.store import ProfileNotFound, Store, StoreError

app = typer.Typer(help="Profile versions: history and rollback.", no_args_is_help=True)

DbOption = Annotated[
    str | None, typer.Option("--db", help="Store URL (default: CALIB_DB or the data dir's SQLite).")
]
ConfigOption = Annotated[str | None, typer.Option("--config", help="YAML settings file.")]
ModelOption = Annotated[str | None, typer.Option("--model", help="Only this model.")]
TaskOption = Annotated[str | None, typer.Option("--task", help="Only this task.")]

_out = Console()
_err = Console(stderr=True)


def _open(db: str | None, config: str | None):  # type: ignore[no-untyped-def]
    settings = load_settings(db=db, config=config)
    try:
        return settings, Store.open(settings.database_url)
    except StoreError as error:
        _err.print(f"[red]cannot open the store {settings.database_url}: {error}[/red]")
        raise typer.Exit(1) from None


def refit(
    model: ModelOption = None,
    task: TaskOption = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Refit calibration profiles from labeled predictions (for cron / CronJob).

    Examples:

      calib refit --db sqlite:///$HOME/.cache/mllm-calib/calib.db

      calib refit --model gemma-3-270m --task cloze --db postgresql+psycopg://calib@db/calib
    """
    from service.refit import RefitConfig, run_refit

    settings, store = _open(db, config)
    try:
        pairs = sorted(store.label_counts())
        if model is not None:
            pairs = [pair for pair in pairs if pair[0] == model]
        if task is not None:
            pairs = [pair for pair in pairs if pair[1] == task]
            if model is not None and not pairs:
                pairs = [(model, task)]  # report "not enough labels" rather than nothing
        if not pairs:
            where = f" for {model}" if model else ""
            _out.print(f"nothing to refit: no labeled predictions{where}")
            return
        refit_config = RefitConfig.from_settings(settings)
        table = Table("model", "task", "status", "version", "labels", "seconds", "reason")
        failed = False
        for pair_model, pair_task in pairs:
            outcome = run_refit(store, refit_config, pair_model, pair_task, trigger="cli")
            failed |= outcome.status == "failed"
            table.add_row(
                pair_model,
                pair_task,
                outcome.status,
                "" if outcome.version is None else str(outcome.version),
                str(outcome.n_labels),
                f"{outcome.duration_s:.2f}",
                outcome.reason,
            )
        _out.print(table)
    except StoreError as error:
        _err.print(f"[red]store error: {error}[/red]")
        raise typer.Exit(1) from None
    finally:
        store.close()
    if failed:
        raise typer.Exit(1)


@app.command("history")
def history(
    model: Annotated[str, typer.Option("--model", help="The model.")],
    task: Annotated[str, typer.Option("--task", help="The task.")] = "default",
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """List the stored versions of (model, task), newest first.

    Examples:

      calib profile history --model gemma-3-270m --task cloze
    """
    _, store = _open(db, config)
    try:
        versions = store.profile_history(model, task)
    finally:
        store.close()
    if not versions:
        _err.print(f"[red]no profile stored for {model!r}, task {task!r}[/red]")
        raise typer.Exit(1)
    table = Table("version", "active", "method", "temperature", "threshold", "created", "reason")
    for version in versions:
        profile = version.profile
        temperature = (profile.calibrator or {}).get("temperature")
        table.add_row(
            str(version.version),
            "*" if version.active else "",
            profile.method,
            "" if temperature is None else f"{temperature:.4g}",
            "" if profile.threshold is None else f"{profile.threshold:.4g}",
            version.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            version.reason,
        )
    _out.print(table)


@app.command("rollback")
def rollback(
    model: Annotated[str, typer.Option("--model", help="The model.")],
    version: Annotated[int, typer.Option("--version", help="The version to re-activate.")],
    task: Annotated[str, typer.Option("--task", help="The task.")] = "default",
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Re-activate an earlier version of (model, task); recorded in the audit log.

    Examples:

      calib profile rollback --model gemma-3-270m --version 3 --task cloze
    """
    _, store = _open(db, config)
    try:
        try:
            done = rollback_version(
                store, model, task, version, by="calib profile rollback", trigger="cli"
            )
        except ProfileNotFound as error:
            _err.print(f"[red]{error}[/red]")
            raise typer.Exit(1) from None
    except StoreError as error:
        _err.print(f"[red]store error: {error}[/red]")
        raise typer.Exit(1) from None
    finally:
        store.close()
    _out.print(f"{model}/{task}: version {version} is active (was {done.previous})")
