"""The label-free input-shift gauge (docs/refit.md, "Input shift"): request inputs embedded off
the request path, a sliding window per (model, task), the active profile's fit window as the
reference, and a permutation test per modality (`calibrators.shift`)."""

from service.shift.collector import SHIFT_METRIC_NAMES, ShiftCollector
from service.shift.inputs import FEATURE_KEYS, MODALITIES, RequestInputs, prompt_text
from service.shift.monitor import ModalityReport, ShiftMonitor, ShiftReport
from service.shift.reference import ReferenceSample, load_reference

__all__ = [
    "FEATURE_KEYS",
    "MODALITIES",
    "SHIFT_METRIC_NAMES",
    "ModalityReport",
    "ReferenceSample",
    "RequestInputs",
    "ShiftCollector",
    "ShiftMonitor",
    "ShiftReport",
    "load_reference",
    "prompt_text",
]
