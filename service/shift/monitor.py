"""`ShiftMonitor`: per (model, task), recent inputs against the active profile's fit window.

* **Recording.** The request path calls `observe(record, inputs)` for each prediction it hands
  to the writer: a dict insert, nothing computed. The prediction writer calls `before_write`
  with each batch on its own thread, just before the INSERT: the request's embeddings are
  computed there (once per request, shared by its choices), stored in the prediction's
  `features` (`input_embedding_image`, `input_embedding_text`: so they survive restarts and a
  later refit window has them) and appended to the sliding window of (model, task).
* **The window** holds the embeddings of the newest `window_size` requests per modality. It is
  process memory: it starts empty after a restart, and with several workers each worker keeps
  the window of the requests it served (a round-robin share of the traffic, so the same
  distribution; `/metrics` and the shift route answer from the worker that serves them).
* **The reference** is loaded from the store (`service.shift.reference`) for the version the
  (model, task) is served with: when a request is served by another version than the loaded
  reference (a refit activation, a manual edit, a rollback, here or in another replica), the
  next read replaces it. Nothing is compared before a version with a stored reference exists.
* **Reads** (`report`) run the permutation test of `calibrators.shift` per modality; a result is
  reused until the window or the reference changes.

Bounded memory: at most `max_keys` (model, task) windows (the least recently fed is dropped),
and inputs waiting for the writer are capped in count and bytes (beyond: not embedded, counted
in `skipped`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from calibrators.shift import ShiftReference, ShiftResult, fit_shift_reference, shift_test
from service.shift.inputs import FEATURE_KEYS, MODALITIES, RequestInputs, embed_all
from service.shift.reference import ReferenceSample, load_reference

if TYPE_CHECKING:
    from service.store import PredictionRecord, Store

__all__ = ["ModalityReport", "ShiftMonitor", "ShiftReport"]

logger = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass(frozen=True)
class ModalityReport:
    """One modality's test: window vs reference."""

    score: float
    threshold: float
    shifted: bool
    p_value: float
    reference: int
    window: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "shifted": self.shifted,
            "p_value": self.p_value,
            "reference": self.reference,
            "window": self.window,
        }


@dataclass(frozen=True)
class ShiftReport:
    """The shift state of one (model, task) (the body of the shift route)."""

    model: str
    task: str
    profile_version: int | None
    reference: int
    window: int
    modalities: dict[str, ModalityReport] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "calibration.shift",
            "model": self.model,
            "task": self.task,
            "profile_version": self.profile_version,
            "reference": self.reference,
            "window": self.window,
            "modalities": {name: m.to_dict() for name, m in self.modalities.items()},
        }


class _Window:
    """The newest requests' embeddings of one (model, task)."""

    def __init__(self, size: int) -> None:
        self.requests = 0  # requests seen (any modality), capped at the window size
        self.vectors: dict[str, deque[list[float]]] = {m: deque(maxlen=size) for m in MODALITIES}
        self.fed = 0  # total additions: a cheap "has it changed" stamp
        self.size = size
        self.profile: tuple[str, int] | None = None  # (profile task, version) last served

    def add(self, embedded: dict[str, list[float]], profile: tuple[str, int]) -> None:
        for modality, vector in embedded.items():
            self.vectors[modality].append(vector)
        self.requests = min(self.size, self.requests + 1)
        self.fed += 1
        self.profile = profile


@dataclass
class _Fitted:
    sample: ReferenceSample
    tests: dict[str, ShiftReference]


class ShiftMonitor:
    """The input-shift gauge of one gateway process (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        window_size: int = 500,
        reference_size: int = 1000,
        alpha: float = 0.01,
        permutations: int = 499,
        min_samples: int = 20,
        max_age_s: float | None = 30 * 86400.0,
        max_keys: int = 64,
        max_pending: int = 10_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.window_size = window_size
        self.reference_size = reference_size
        self.alpha = alpha
        self.permutations = permutations
        self.min_samples = min_samples
        self.max_age_s = max_age_s
        self.max_keys = max_keys
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._lock = threading.Lock()
        self._pending: dict[str, RequestInputs] = {}
        self._pending_bytes = 0
        self._windows: OrderedDict[Key, _Window] = OrderedDict()
        self._references: dict[tuple[str, str, int], _Fitted] = {}
        self._reports: dict[Key, tuple[tuple[Any, ...], ShiftReport]] = {}
        self._fit_lock = threading.Lock()  # one reference load at a time
        self.skipped = 0  # requests not embedded: pending inputs over their bounds

    # ------------------------------------------------------------------ request path

    def observe(self, record: PredictionRecord, inputs: RequestInputs) -> None:
        """Remember `record`'s inputs until the writer stores it. Never raises, never blocks."""
        try:
            size = 0 if inputs.charged else inputs.nbytes  # choices share one request's bytes
            with self._lock:
                if (
                    len(self._pending) >= self.max_pending
                    or self._pending_bytes + size > self.max_pending_bytes
                ):
                    self.skipped += 1
                    return
                self._pending[record.id] = inputs
                self._pending_bytes += size
                inputs.charged = True
        except Exception:  # pragma: no cover - must never break a response
            logger.exception("shift monitor: observe failed")

    # ------------------------------------------------------------------ writer thread

    def before_write(self, records: Iterable[PredictionRecord]) -> None:
        """Embed the inputs of `records` into their features and the windows (writer thread).

        Idempotent: a batch written again after a store failure finds nothing pending.
        """
        taken: list[tuple[PredictionRecord, RequestInputs]] = []
        with self._lock:
            for record in records:
                inputs = self._pending.pop(record.id, None)
                if inputs is not None:
                    self._pending_bytes = max(0, self._pending_bytes - inputs.nbytes)
                    taken.append((record, inputs))
        try:
            embed_all(inputs for _, inputs in taken)  # the texts in one vectorised pass
        except Exception:  # each is embedded (or its failure logged) on its own below
            logger.exception("shift monitor: embedding a batch failed")
        for record, inputs in taken:
            try:
                embedded = inputs.embeddings()
            except Exception:
                logger.exception("shift monitor: embedding %s failed", record.id)
                continue
            for modality, vector in embedded.items():
                record.features[FEATURE_KEYS[modality]] = vector
            if embedded and not inputs.counted:
                inputs.counted = True
                self._add(
                    (record.model, record.task),
                    embedded,
                    (inputs.profile_task, record.profile_version),
                )

    def _add(self, key: Key, embedded: dict[str, list[float]], profile: tuple[str, int]) -> None:
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(self.window_size)
                while len(self._windows) > self.max_keys:
                    dropped, _ = self._windows.popitem(last=False)
                    self._reports.pop(dropped, None)
            else:
                self._windows.move_to_end(key)
            window.add(embedded, profile)

    # ------------------------------------------------------------------ reads

    def windowed(self) -> list[Key]:
        """Every (model, task) with a window in this process."""
        with self._lock:
            return list(self._windows)

    def has_window(self, model: str, task: str) -> bool:
        with self._lock:
            return (model, task) in self._windows

    def served_profile(self, model: str, task: str) -> tuple[str, int] | None:
        """(profile task, version) that served the newest windowed request."""
        with self._lock:
            window = self._windows.get((model, task))
            return window.profile if window is not None else None

    def report(self, model: str, task: str, profile: tuple[str, int] | None = None) -> ShiftReport:
        """The shift state of (model, task) against the reference of `profile` ((profile task,
        version); default: the one that served the newest windowed request). Blocking: store
        reads and numpy; call it from a thread."""
        key = (model, task)
        with self._lock:
            window = self._windows.get(key)
            if profile is None and window is not None:
                profile = window.profile
            stamp = (window.fed if window is not None else 0, profile)
            cached = self._reports.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            vectors = (
                {m: np.asarray(list(v)) for m, v in window.vectors.items() if v}
                if window is not None
                else {}
            )
            requests = window.requests if window is not None else 0
        fitted = self._fitted(model, profile) if profile is not None and profile[1] > 0 else None
        modalities: dict[str, ModalityReport] = {}
        if fitted is not None:
            for modality, reference in fitted.tests.items():
                current = vectors.get(modality)
                if current is None or current.shape[0] < self.min_samples:
                    continue
                if current.shape[1] != reference.dim:
                    continue
                result = self._test(reference, current)
                modalities[modality] = ModalityReport(
                    result.score,
                    result.threshold,
                    result.shifted,
                    result.p_value,
                    result.n_reference,
                    result.n_window,
                )
        report = ShiftReport(
            model,
            task,
            profile[1] if profile is not None else None,
            fitted.sample.rows if fitted is not None else 0,
            requests,
            modalities,
        )
        with self._lock:
            if key in self._windows or window is None:
                self._reports[key] = (stamp, report)
        return report

    def _test(self, reference: ShiftReference, window: np.ndarray) -> ShiftResult:
        return shift_test(reference, window, alpha=self.alpha, permutations=self.permutations)

    def _fitted(self, model: str, profile: tuple[str, int]) -> _Fitted | None:
        """The prepared reference of (model, profile task, version), loaded once."""
        ref_key = (model, *profile)
        fitted = self._references.get(ref_key)
        if fitted is not None:
            return fitted
        with self._fit_lock:
            fitted = self._references.get(ref_key)
            if fitted is not None:
                return fitted
            sample = load_reference(
                self.store,
                model,
                profile[0],
                profile[1],
                size=self.reference_size,
                max_age_s=self.max_age_s,
            )
            tests = {
                modality: fit_shift_reference(matrix, seed=_seed(ref_key, modality))
                for modality, matrix in sample.samples.items()
                if matrix.shape[0] >= self.min_samples
            }
            fitted = _Fitted(sample, tests)
            # The reference of the same (model, task) under an older version is dropped: a
            # version is activated again only by a rollback, which reloads it.
            for old in [k for k in self._references if k[:2] == ref_key[:2]]:
                del self._references[old]
            self._references[ref_key] = fitted
            return fitted


def _seed(key: tuple[str, str, int], modality: str) -> int:
    """A fixed random-feature map per reference, the same in every process."""
    import zlib

    return zlib.crc32(f"{key[0]}\0{key[1]}\0{key[2]}\0{modality}".encode())
