"""`calib engine ...`: prepare, start, stop and inspect the embedded vLLM CPU engine."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from service import engine
from service.engine import EngineError, EngineLayout, EngineSettings

app = typer.Typer(help="Manage the embedded vLLM CPU engine (Gemma 3 270M).", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def _fail(exc: EngineError) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
    return typer.Exit(code=1)


@app.command()
def prepare() -> None:
    """Create the engine virtualenv, assemble and convert the model (skips what is done).

    Examples:

      calib engine prepare

      CALIB_DATA_DIR=/srv/calib calib engine prepare
    """
    layout = EngineLayout.default()
    t0 = time.monotonic()
    try:
        with console.status("preparing the engine ...") as spinner:
            result = engine.prepare(
                layout, EngineSettings(), report=lambda msg: spinner.update(f"[dim]{msg}")
            )
    except EngineError as exc:
        raise _fail(exc) from exc
    for step, seconds in result.ran.items():
        console.print(f"[green]done[/] {step} in {seconds:.0f} s")
    for step in result.skipped:
        console.print(f"[dim]skip {step} (already done)[/]")
    console.print(
        f"engine prepared in {time.monotonic() - t0:.0f} s: model {layout.model_dir}, "
        f"virtualenv {layout.venv_dir}"
    )


@app.command()
def start(
    port: int | None = typer.Option(None, help="Port to listen on (default 8011)."),
    host: str | None = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
) -> None:
    """Launch the engine, wait until it is healthy and print its OpenAI base URL.

    Examples:

      calib engine start

      calib engine start --port 8012
    """
    overrides = {k: v for k, v in {"port": port, "host": host}.items() if v is not None}
    settings = EngineSettings(**overrides)
    t0 = time.monotonic()
    try:
        with console.status(f"starting the engine on port {settings.port} ...") as spinner:
            info = engine.start(
                settings, EngineLayout.default(), report=lambda m: spinner.update(f"[dim]{m}")
            )
    except EngineError as exc:
        raise _fail(exc) from exc
    console.print(
        f"[green]engine healthy[/] after {time.monotonic() - t0:.0f} s "
        f"(pid {info.pid}, model {info.served_model_name}, log {info.log_file})"
    )
    typer.echo(info.base_url)


@app.command()
def stop(port: int | None = typer.Option(None, help="Port of the engine (default 8011).")) -> None:
    """Stop the engine started on PORT.

    Examples:

      calib engine stop

      calib engine stop --port 8012
    """
    port = EngineSettings().port if port is None else port
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
