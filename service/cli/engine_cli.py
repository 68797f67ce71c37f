"""`calib engine ...`: prepare, start, stop and inspect the embedded vLLM CPU engine."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage the embedded vLLM CPU engine (Gemma 3 270M).", no_args_is_help=True)
