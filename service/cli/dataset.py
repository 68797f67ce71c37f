"""`calib dataset build`: write a question set as JSONL (also `python -m service.datasets`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from service.datasets.questions import FORMS, build_question_set, write_jsonl
from service.datasets.vision import build_vision_set, write_vision_jsonl

app = typer.Typer(help="Build real-data question sets (country -> capital).", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Build real-data question sets (country -> capital)."""


@app.command()
def build(
    out: Path = typer.Option(..., "--out", help="JSONL file to write."),
    seed: int = typer.Option(0, help="Same seed, same file."),
    n: int = typer.Option(100, help="Questions per form."),
    form: str = typer.Option(
        "all", help="cloze, options, idk, all (the text forms) or vision (image questions)."
    ),
    style: str = typer.Option("completion", help="completion (few-shot prompt) or chat."),
) -> None:
    """Build a question set and write it to OUT.

    Examples:

      calib dataset build --out questions.jsonl

      calib dataset build --out mcq.jsonl --form options --style chat --n 50 --seed 3

      calib dataset build --out images.jsonl --form vision --n 40 --seed 7
    """
    if form == "vision":
        out.parent.mkdir(parents=True, exist_ok=True)
        count = write_vision_jsonl(build_vision_set(seed=seed, n=n), out)
        typer.echo(f"wrote {count} image questions to {out}")
        return
    forms = FORMS if form == "all" else (form,)
    if any(f not in FORMS for f in forms):
        raise typer.BadParameter(f"--form must be one of {', '.join(FORMS)}, all or vision")
    if style not in ("completion", "chat"):
        raise typer.BadParameter("--style must be completion or chat")
    chosen: Literal["completion", "chat"] = "chat" if style == "chat" else "completion"
    questions = build_question_set(seed=seed, n=n, forms=forms, style=chosen)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    count = write_jsonl(questions, out)
    typer.echo(f"wrote {count} questions to {out}")
