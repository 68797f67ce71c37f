"""Reliability of the active profile on held-out labels: bins as JSON, and a diagram as SVG.

Held-out means the items of the refit window that the deterministic split
(`calibrators.refit.holdout_mask`, by a hash of the id) puts in the held-out part with the
configured `refit_holdout_fraction`: a refit never fits on them, so they are fair for every
version fitted with that fraction. Only items of the profile's mode count.

* raw confidence: the chosen option's probability at T = 1 (options) or ``exp(mean logprob)``
  (sequence), exactly as served before calibration;
* calibrated: the active profile's calibrator applied to the same items.

Bins are `calibrators.reliability_bins` (uniform, `bins` of them), the ECE the same binning.
The SVG is drawn with matplotlib (Agg, no display), two panels side by side (raw, calibrated):
accuracy bars per confidence bin against the diagonal, with each bin's count above its bar.
Rendering takes tens of milliseconds: callers run it in a thread.
"""

from __future__ import annotations

import io
import math
from datetime import timedelta
from typing import Any

import numpy as np

from calibrators import (
    IsotonicCalibrator,
    PlattScaler,
    TemperatureScaler,
    expected_calibration_error,
    reliability_bins,
)
from calibrators.refit import holdout_mask
from service.refit.dataset import build_labeled_set
from service.refit.job import RefitConfig
from service.store import Store
from service.store.records import utcnow

__all__ = ["heldout_confidences", "reliability_report", "render_reliability_svg"]

_IDENTITY = TemperatureScaler.from_dict({"temperature": 1.0})


def heldout_confidences(
    store: Store, config: RefitConfig, profile: Any, model: str, task: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw, calibrated, correct) of the held-out labeled items of `profile`'s mode."""
    since = None
    if config.max_age_s is not None:
        since = utcnow() - timedelta(seconds=config.max_age_s)
    batches = store.labeled_rows(model, task, since=since, limit=config.max_labels)
    data, _ = build_labeled_set(batches, mode=profile.mode, signals=profile.method == "logistic")
    if len(data) == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    data = data.subset(holdout_mask(data.ids, config.holdout_fraction))
    calibrator = profile.fitted_calibrator
    if data.mode == "options":
        raw = _IDENTITY.confidence(data.option_logprobs, data.chosen)
        if isinstance(calibrator, TemperatureScaler):
            calibrated = calibrator.confidence(data.option_logprobs, data.chosen)
        elif isinstance(calibrator, PlattScaler | IsotonicCalibrator):
            calibrated = calibrator.predict_proba(raw)
        else:
            calibrated = raw
    else:
        raw = np.asarray(data.raw_confidence, dtype=np.float64)
        if isinstance(calibrator, PlattScaler | IsotonicCalibrator):
            calibrated = calibrator.predict_proba(raw)
        else:
            calibrated = raw
    return raw, np.asarray(calibrated, dtype=np.float64), data.correct


def _stage(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> dict[str, Any]:
    ece = expected_calibration_error(conf, correct, n_bins) if conf.size else math.nan
    return {
        "ece": ece if math.isfinite(ece) else None,
        "mean_confidence": float(conf.mean()) if conf.size else None,
        "bins": [b.to_dict() for b in reliability_bins(conf, correct, n_bins)],
    }


def reliability_report(
    store: Store,
    config: RefitConfig,
    version: Any,
    *,
    n_bins: int = 10,
) -> dict[str, Any]:
    """The JSON body of `GET …/{model}/reliability` for a stored `ProfileVersion`."""
    profile = version.profile
    raw, calibrated, correct = heldout_confidences(
        store, config, profile, version.model, version.task
    )
    return {
        "object": "calibration.reliability",
        "model": version.model,
        "task": version.task,
        "version": version.version,
        "mode": profile.mode,
        "method": profile.method,
        "n": int(correct.size),
        "accuracy": float(correct.mean()) if correct.size else None,
        "n_bins": n_bins,
        "holdout_fraction": config.holdout_fraction,
        "raw": _stage(raw, correct, n_bins),
        "calibrated": _stage(calibrated, correct, n_bins),
    }


def render_reliability_svg(report: dict[str, Any]) -> bytes:
    """A reliability diagram of `report` (raw | calibrated) as SVG bytes.

    Each bar is an SVG group with id ``<stage>-bin-<i>`` (stage ``raw`` / ``calibrated``), so
    the diagram can be checked (and styled) without parsing paths.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    # Text as <text> elements (searchable, smaller) rather than glyph paths.
    matplotlib.rcParams["svg.fonttype"] = "none"
    from matplotlib.figure import Figure  # no pyplot: no global state, thread-safe

    figure = Figure(figsize=(10, 4.6))
    axes = figure.subplots(1, 2, sharey=True)
    for ax, stage, colour in zip(axes, ("raw", "calibrated"), ("#c0504d", "#4f81bd"), strict=True):
        block = report[stage]
        ax.plot([0, 1], [0, 1], linestyle="--", color="#555555", linewidth=1, label="perfect")
        for i, b in enumerate(block["bins"]):
            if not b["count"]:
                continue
            width = b["upper"] - b["lower"]
            (bar,) = ax.bar(
                b["lower"],
                b["accuracy"],
                width=width,
                align="edge",
                color=colour,
                edgecolor="black",
                linewidth=0.6,
                alpha=0.85,
            )
            bar.set_gid(f"{stage}-bin-{i}")
            ax.text(
                b["lower"] + width / 2,
                min(b["accuracy"] + 0.02, 1.02),
                str(b["count"]),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ece = block["ece"]
        title = f"{stage}: ECE {ece:.3f}" if ece is not None else f"{stage}: no held-out labels"
        ax.set_title(title)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("confidence")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    figure.suptitle(
        f"{report['model']} / {report['task']} — version {report['version']} "
        f"({report['method']}), {report['n']} held-out labels"
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buffer.getvalue()
