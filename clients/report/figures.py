"""Matplotlib figures (Agg backend), returned as PNG and SVG bytes.

Reliability diagrams take bins as plain dicts (`lower, upper, count, mean_confidence, accuracy`),
the shape of `calibrators.reliability_bins(...).to_dict()` and of the gateway's
`GET /v1/calibration/models/{model}/reliability`, so a local demo and a remote report draw alike.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from calibrators import risk_coverage_curve

Bins = Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Figure:
    """One rendered figure: a file stem, a caption, PNG and SVG bytes."""

    name: str
    caption: str
    png: bytes
    svg: bytes


def _render(fig: Any, name: str, caption: str) -> Figure:
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    fig.savefig(svg, format="svg", bbox_inches="tight")
    plt.close(fig)
    return Figure(name, caption, png.getvalue(), svg.getvalue())


def _draw_bins(ax: Any, bins: Bins, title: str, ece: float | None) -> None:
    lowers = np.array([b["lower"] for b in bins], dtype=float)
    widths = np.array([b["upper"] - b["lower"] for b in bins], dtype=float)
    counts = np.array([b["count"] for b in bins], dtype=float)
    acc = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins], dtype=float)
    conf = np.array([b["mean_confidence"] if b["count"] else np.nan for b in bins], dtype=float)
    ax.bar(
        lowers,
        acc,
        width=widths,
        align="edge",
        color="#4C72B0",
        edgecolor="white",
        label="accuracy",
    )
    gap_bottom = np.where(np.isnan(conf), 0, np.minimum(acc, conf))
    gap_height = np.where(np.isnan(conf), 0, np.abs(conf - acc))
    ax.bar(
        lowers,
        gap_height,
        bottom=gap_bottom,
        width=widths,
        align="edge",
        color="#DD8452",
        alpha=0.45,
        edgecolor="#DD8452",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    for x, w, n in zip(lowers, widths, counts, strict=True):
        if n:
            ax.text(
                x + w / 2, 0.02, f"{int(n)}", ha="center", va="bottom", fontsize=7, color="white"
            )
    suffix = f" — ECE {ece:.3f}" if ece is not None else ""
    ax.set(
        xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"{title}{suffix}"
    )
    ax.legend(loc="upper left", fontsize=7)


def reliability_diagram(
    raw_bins: Bins,
    calibrated_bins: Bins,
    *,
    title: str,
    ece_raw: float | None = None,
    ece_calibrated: float | None = None,
    name: str = "reliability",
) -> Figure:
    """Accuracy per confidence bin against the diagonal, raw and calibrated side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    _draw_bins(axes[0], raw_bins, "raw", ece_raw)
    _draw_bins(axes[1], calibrated_bins, "calibrated", ece_calibrated)
    fig.suptitle(title)
    caption = f"{title}: reliability diagram (bar labels are item counts)"
    return _render(fig, name, caption)


def risk_coverage_plot(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    title: str,
    threshold_point: tuple[float, float] | None = None,
    name: str = "risk_coverage",
) -> Figure:
    """Selective risk vs coverage when answering the most confident first; one line per series
    (`label -> (confidence, correct)`), and the chosen threshold's operating point."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for label, (conf, correct) in series.items():
        if len(conf):
            coverage, risk, _ = risk_coverage_curve(conf, correct)
            ax.plot(coverage, risk, label=label)
    if threshold_point is not None:
        ax.plot(*threshold_point, "o", color="black", label="chosen threshold")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="coverage", ylabel="selective risk", title=title)
    ax.legend(fontsize=8)
    return _render(fig, name, f"{title}: risk–coverage curve")


def confidence_histogram(
    series: Mapping[str, np.ndarray],
    *,
    title: str,
    name: str = "confidence_histogram",
) -> Figure:
    """Distribution of confidence values, one histogram per series."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    edges = np.linspace(0, 1, 21)
    for label, values in series.items():
        if len(values):
            ax.hist(values, bins=edges.tolist(), alpha=0.55, label=label)
    ax.set(xlim=(0, 1), xlabel="confidence", ylabel="answers", title=title)
    ax.legend(fontsize=8)
    return _render(fig, name, f"{title}: confidence histogram")
