"""The `calib` command line, assembled in one place: users' and operators' commands.

Client commands (`clients.cli.*`: demo, report) talk HTTP to a running gateway. Server commands
(`service.cli.*`: serve, engine, keys, dataset, refit, profile, optimize-prompt) are defined
there and only mounted here: the CLI is the one place allowed to launch the service, and it does
so through those entry points only.

`pip install mllm-calib` (no `server` extra) gives `calib --version`; every other command then
says to install the server extra (clients/cli/server_extra.py).
"""

from __future__ import annotations

import typer

from clients.cli.server_extra import is_missing_dependency, mount_unavailable
from service.version import __version__

app = typer.Typer(
    name="calib",
    help="mllm-calib: calibrated confidence, abstention and a feedback loop in front of vLLM.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mllm-calib {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """mllm-calib: calibrated confidence, abstention and a feedback loop in front of vLLM."""


_SERVER_COMMANDS = [
    "engine",
    "keys",
    "dataset",
    "serve",
    "refit",
    "optimize-prompt",
    "profile",
    "demo",
    "report",
]

try:
    from clients.cli import demo, report
    from service.cli import dataset, engine, keys, optimize_prompt, refit, serve
except ModuleNotFoundError as exc:  # the client-only install: no `server` extra
    if not is_missing_dependency(exc):
        raise
    mount_unavailable(app, _SERVER_COMMANDS, exc)
else:
    app.add_typer(engine.app, name="engine")
    app.add_typer(keys.app, name="keys")
    app.add_typer(dataset.app, name="dataset")
    app.command("serve")(serve.serve)
    app.command("refit")(refit.refit)
    app.command("optimize-prompt")(optimize_prompt.optimize_prompt)
    app.add_typer(refit.app, name="profile")
    app.command("demo")(demo.demo)
    app.command("report")(report.report)
