"""`calib engine ...`: prepare, start, stop and inspect the embedded vLLM CPU engine."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from service import engine
from service.engine import EngineError, EngineLayout, EngineSettings
from service.engine.models import DEFAULT_MODEL, MODELS, require_prepared, settings_for

app = typer.Typer(help="Manage the embedded vLLM CPU engine (Gemma 3 270M).", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def _model_option() -> str:
    return typer.Option(DEFAULT_MODEL, "--model", help=f"Embedded model: {' or '.join(MODELS)}.")


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise typer.BadParameter(f"--model must be one of {', '.join(MODELS)}")


def _fail(exc: EngineError) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    return typer.Exit(code=1)


@app.command()
def prepare(model: str = _model_option()) -> None:
    """Create the engine virtualenv, assemble and convert the model (skips what is done).

    `--model tiny-vlm` also builds the project's small vision-language model on top
    (docs/engine.md).

    Examples:

      calib engine prepare

      calib engine prepare --model tiny-vlm

      CALIB_DATA_DIR=/srv/calib calib engine prepare
    """
    _check_model(model)
    layout = EngineLayout.default()
    t0 = time.monotonic()
    try:
        with console.status("preparing the engine ...") as spinner:
            result = engine.prepare(
                layout,
                EngineSettings(),
                report=lambda msg: spinner.update(f"[dim]{msg}"),
                model=model,
            )
    except EngineError as exc:
        raise _fail(exc) from exc
    for step, seconds in result.ran.items():
        console.print(f"[green]done[/] {step} in {seconds:.0f} s")
    for step in result.skipped:
        console.print(f"[dim]skip {step} (already done)[/]")
    folder = layout.vlm_dir if model != DEFAULT_MODEL else layout.model_dir
    console.print(
        f"engine prepared in {time.monotonic() - t0:.0f} s: model {folder}, "
        f"virtualenv {layout.venv_dir}"
    )


@app.command()
def start(
    port: int | None = typer.Option(
        None, help="Port to listen on (default 8011; 8012 for tiny-vlm)."
    ),
    host: str | None = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    model: str = _model_option(),
) -> None:
    """Launch the engine, wait until it is healthy and print its OpenAI base URL.

    Examples:

      calib engine start

      calib engine start --port 8013

      calib engine start --model tiny-vlm          # serves `tiny-vlm` on port 8012
    """
    _check_model(model)
    layout = EngineLayout.default()
    settings = settings_for(model, layout, port=port, host=host)
    t0 = time.monotonic()
    try:
        require_prepared(model, layout)
        with console.status(f"starting the engine on port {settings.port} ...") as spinner:
            info = engine.start(settings, layout, report=lambda m: spinner.update(f"[dim]{m}"))
    except EngineError as exc:
        raise _fail(exc) from exc
    console.print(
        f"[green]engine healthy[/] after {time.monotonic() - t0:.0f} s "
        f"(pid {info.pid}, model {info.served_model_name}, log {info.log_file})"
    )
    typer.echo(info.base_url)


@app.command()
def stop(
    port: int | None = typer.Option(None, help="Port of the engine (default 8011)."),
    model: str = _model_option(),
) -> None:
    """Stop the engine started on PORT (or the default port of --model).

    Examples:

      calib engine stop

      calib engine stop --model tiny-vlm

      calib engine stop --port 8012
    """
    _check_model(model)
    if port is None:
        port = settings_for(model, EngineLayout.default()).port
    if engine.stop(EngineLayout.default(), port):
        console.print(f"engine on port {port} stopped")
    else:
        console.print(f"no engine running on port {port}")


@app.command()
def status() -> None:
    """List engines started from this data directory, with their health.

    Examples:

      calib engine status
    """
    found = engine.status(EngineLayout.default())
    layout = EngineLayout.default()
    console.print(
        f"data dir {layout.root}: "
        + ("prepared" if engine.is_prepared(layout) else "[yellow]not prepared[/]")
    )
    if not found:
        console.print("no engine running")
        raise typer.Exit(code=3)
    table = Table("port", "pid", "state", "model", "url", "log")
    for st in found:
        state = (
            "[green]healthy" if st.healthy else ("[yellow]starting" if st.alive else "[red]dead")
        )
        table.add_row(
            str(st.info.port), str(st.info.pid), state, st.info.served_model_name,
            st.info.base_url, st.info.log_file,
        )  # fmt: skip
    console.print(table)
    if not any(st.healthy for st in found):
        raise typer.Exit(code=3)
