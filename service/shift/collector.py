"""`calib_input_shift_score` and `calib_input_shift_threshold` on `/metrics` (docs/metrics.md).

Per (model, task, modality) with a test result in this process: the window's score and the
permutation threshold (the window is flagged when the score is above it). Process state, like
the window itself: with several workers the answering worker reports its own window. The
`model` label follows the known-models rule of `service.metrics` (only configured or
upstream-listed models; a gauge cannot be summed into ``_other``, so others are left out) and
the `task` label the same per-process bound as the request-path metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from service import metrics
from service.shift.monitor import ShiftMonitor

__all__ = ["SHIFT_METRIC_NAMES", "ShiftCollector"]

logger = logging.getLogger(__name__)

_LABELS = ["model", "task", "modality"]
_FAMILIES = {
    "calib_input_shift_score": (
        "Label-free input shift of the newest requests against the inputs the active profile "
        "was fitted on: MMD² of random Fourier features, by modality (image, text)."
    ),
    "calib_input_shift_threshold": (
        "Permutation threshold of calib_input_shift_score (a window drawn from the reference "
        "distribution exceeds it with probability at most shift_alpha)."
    ),
}
SHIFT_METRIC_NAMES = tuple(_FAMILIES)


def _families() -> dict[str, GaugeMetricFamily]:
    return {name: GaugeMetricFamily(name, doc, labels=_LABELS) for name, doc in _FAMILIES.items()}


class ShiftCollector:
    """Collects the shift gauges from a `ShiftMonitor` at scrape time (in the route's thread)."""

    def __init__(self, monitor: ShiftMonitor) -> None:
        self.monitor = monitor

    @staticmethod
    def describe() -> Iterator[Metric]:
        """The two gauge families without samples (no monitor needed)."""
        yield from _families().values()

    def collect(self) -> Iterator[Metric]:
        families = _families()
        known = metrics.known_models()
        for model, task in self.monitor.windowed():
            if model not in known:
                continue
            try:
                report = self.monitor.report(model, task)
            except Exception:
                logger.exception("input shift of %s/%s failed", model, task)
                continue
            task_label = metrics.task_label(task)
            for modality, result in sorted(report.modalities.items()):
                labels = [model, task_label, modality]
                families["calib_input_shift_score"].add_metric(labels, result.score)
                families["calib_input_shift_threshold"].add_metric(labels, result.threshold)
        yield from families.values()
