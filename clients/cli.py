"""The `calib` command line: one entry point for users and operators.

Client commands (demo, report) talk HTTP to a running gateway. Server-side command groups
(serve, engine, keys, refit) are defined in `service.cli.*` and only mounted here: the CLI is the
one place allowed to launch the service, and it does so through those entry points only.

`pip install mllm-calib` (no `server` extra) gives `calib --version`; every other command then
says to install the server extra (clients/server_extra.py).
"""

from __future__ import annotations

import typer

from clients.server_extra import is_missing_dependency, mount_unavailable
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
    from clients import demo_cli, report_cli
    from service.cli import engine_cli, keys_cli, optimize_cli, refit_cli, serve_cli
    from service.datasets import cli as dataset_cli
except ModuleNotFoundError as exc:  # the client-only install: no `server` extra
    if not is_missing_dependency(exc):
        raise
    mount_unavailable(app, _SERVER_COMMANDS, exc)
else:
    app.add_typer(engine_cli.app, name="engine")
    app.add_typer(keys_cli.app, name="keys")
    app.add_typer(dataset_cli.app, name="dataset")
    app.command("serve")(serve_cli.serve)
    app.command("refit")(refit_cli.refit)
    app.command("optimize-prompt")(optimize_cli.optimize_prompt)
    app.add_typer(refit_cli.app, name="profile")
    app.command("demo")(demo_cli.demo)
    app.command("report")(report_cli.report)


if __name__ == "__main__":  # pragma: no cover
    app()
