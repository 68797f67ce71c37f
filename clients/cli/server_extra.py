"""Commands of `calib` that need the `server` extra, when it is not installed.

`pip install mllm-calib` is the client side (SDK + `calib --version`); the gateway, store, refit,
engine, demo and report commands import FastAPI, SQLAlchemy, numpy ... from the `server` extra.
Without it those commands still exist, so `calib serve` says what to install instead of failing
with a traceback or "No such command".
"""

from __future__ import annotations

from collections.abc import Callable

import typer
from rich.markup import escape

__all__ = ["INSTALL_HINT", "is_missing_dependency", "mount_unavailable"]

INSTALL_HINT = "pip install 'mllm-calib[server]'"

#: Our own packages: a ModuleNotFoundError naming one of them is a bug, not a missing extra.
_OWN_PACKAGES = frozenset({"calibrators", "service", "clients"})


def is_missing_dependency(exc: ModuleNotFoundError) -> bool:
    """True when the module that failed to import is a third-party one (an extra not installed)."""
    top = (exc.name or "").partition(".")[0]
    return bool(top) and top not in _OWN_PACKAGES


def _unavailable(name: str, missing: str) -> Callable[[], None]:
    def command() -> None:
        typer.echo(
            f"`calib {name}` needs the server extra, which is not installed "
            f"(no module named {missing!r}). Install it with: {INSTALL_HINT}",
            err=True,
        )
        raise typer.Exit(1)

    return command


def mount_unavailable(app: typer.Typer, names: list[str], exc: ModuleNotFoundError) -> None:
    """Register each of `names` as a command that explains how to install the server extra.

    They accept any arguments and options (`calib engine start --help` included), so every
    spelling of a server command gets the same message.
    """
    settings = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
    for name in names:
        app.command(
            name,
            help=escape(f"Needs the server extra: {INSTALL_HINT}"),
            context_settings=settings,
            add_help_option=False,
        )(_unavailable(name, exc.name or "?"))
