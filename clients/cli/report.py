"""`calib report`: an HTML report of a model's calibration, from a running gateway (HTTP only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from clients.report import Figure, reliability_diagram, render_html
from clients.sdk import CalibClient, CalibError

_HISTORY_ROWS: tuple[tuple[str, str], ...] = (
    ("active", "active"),
    ("method", "method"),
    ("temperature", "temperature"),
    ("threshold", "threshold"),
    ("labels", "n_labels"),
    ("held-out ECE raw", "ece_raw"),
    ("held-out ECE calibrated", "ece_calibrated"),
    ("coverage", "coverage"),
    ("selective risk", "selective_risk"),
    ("reason", "reason"),
)


def _version_values(version: dict[str, Any]) -> dict[str, Any]:
    metrics = version.get("metrics") or {}
    raw, calibrated = metrics.get("raw") or {}, metrics.get("calibrated") or {}
    return {
        **version,
        "ece_raw": raw.get("ece"),
        "ece_calibrated": calibrated.get("ece"),
        "coverage": metrics.get("coverage"),
        "selective_risk": metrics.get("selective_risk"),
    }


def build_report(profile: dict[str, Any], reliability: dict[str, Any] | None) -> str:
    """The HTML page for `GET …/models/{model}` and `GET …/{model}/reliability` bodies."""
    history = [_version_values(v) for v in profile.get("history", [])][-8:]
    columns = [f"v{v['version']}" for v in history]
    rows = [(label, [v.get(key) for v in history]) for label, key in _HISTORY_ROWS]
    figures: list[Figure] = []
    if reliability and reliability.get("n"):
        figures.append(
            reliability_diagram(
                reliability["raw"]["bins"],
                reliability["calibrated"]["bins"],
                title=f"{profile['model']} / {profile['task']} v{reliability['version']} "
                f"({reliability['n']} held-out labels)",
                ece_raw=reliability["raw"]["ece"],
                ece_calibrated=reliability["calibrated"]["ece"],
            )
        )
    active = profile.get("active") or {}
    notes = {
        "model": f"{profile['model']} (task {profile['task']})",
        "active version": str(active.get("version", "none")),
    }
    if not figures:
        notes["reliability"] = "no held-out labels yet: post feedback and refit first"
    return render_html(f"Calibration report: {profile['model']}", rows, columns, figures, notes)


def report(
    model: str = typer.Option(..., "--model", "-m", help="Model name as clients send it."),
    task: str = typer.Option("default", "--task", help="Calibration task of the model."),
    out: Path = typer.Option(Path("report.html"), "--out", help="Where to write the HTML."),
    gateway: str = typer.Option(
        "http://127.0.0.1:8080", "--gateway", envvar="CALIB_GATEWAY", help="Gateway URL."
    ),
    api_key: str | None = typer.Option(None, "--api-key", envvar="CALIB_API_KEY"),
) -> None:
    """Write an HTML report of a model's calibration: version history and reliability diagram.

    Examples:

      calib report --model gemma-3-270m --task cloze --out cloze.html

      CALIB_GATEWAY=http://gw:8080 CALIB_API_KEY=sk-calib-... calib report -m qwen2-vl
    """
    try:
        with CalibClient(gateway, api_key) as client:
            profile = client.profile(model, task)
            reliability = client.reliability(model, task)
    except CalibError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    out.write_text(build_report(profile, reliability), encoding="utf-8")
    typer.echo(f"report: {out}")
