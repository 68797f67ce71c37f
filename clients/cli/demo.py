"""`calib demo`: the main job, end to end (see clients/demo/runner.py for the steps)."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the report and data."),
    keep: bool = typer.Option(False, "--keep", help="Leave engine and gateway running."),
    gateway: str | None = typer.Option(
        None, "--gateway", help="Use this running gateway instead of starting one."
    ),
    engine: str | None = typer.Option(
        None, "--engine", help="OpenAI base URL of a running engine (default: embedded)."
    ),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CALIB_API_KEY"),
    model: str = typer.Option("gemma-3-270m", "--model", help="Served model name."),
    vision: bool = typer.Option(
        True, "--vision/--no-vision", help="Also run the image task on the tiny VLM."
    ),
    vlm: str | None = typer.Option(
        None, "--vlm", help="OpenAI base URL of a running tiny-vlm engine (default: embedded)."
    ),
    n: int = typer.Option(200, "--n", min=20, help="Questions per form (mcq and cloze)."),
    seed: int = typer.Option(0, "--seed", help="Question-set seed."),
    target_risk: float = typer.Option(
        0.3, "--target-risk", min=0.01, max=0.99, help="Selective risk α the threshold targets."
    ),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=256),
    prompt_search: bool = typer.Option(
        True,
        "--prompt-search/--no-prompt-search",
        help="First search the mcq system prompt on the training part (prompt-optimization job).",
    ),
    prompt_budget: int = typer.Option(
        5, "--prompt-budget", min=1, max=50, help="Candidate prompts the search may evaluate."
    ),
) -> None:
    """Run the calibration loop on real questions and show raw vs calibrated quality.

    Starts (or reuses) the embedded vLLM engine and a gateway, searches the mcq system prompt on
    the training part, answers the training part, posts the gold labels, refits, answers a
    held-out part, then prints the before/after table and writes summary.json, report.html and
    figures to --out.

    Examples:

      calib demo

      calib demo --out /tmp/run1 --n 60 --keep

      calib demo --gateway http://127.0.0.1:8080 --api-key sk-calib-...
    """
    from clients.demo.runner import DemoOptions, run_demo

    options = DemoOptions(
        out_dir=out,
        gateway_url=gateway,
        engine_url=engine,
        api_key=api_key,
        model=model,
        vision=vision,
        vlm_url=vlm,
        n=n,
        seed=seed,
        target_risk=target_risk,
        concurrency=concurrency,
        keep=keep,
        prompt_search=prompt_search,
        prompt_budget=prompt_budget,
    )
    try:
        run_demo(options)
    except KeyboardInterrupt:
        typer.echo("interrupted: stopped what the demo started", err=True)
        raise typer.Exit(130) from None
