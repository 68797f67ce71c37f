"""Labeled predictions → `calibrators.refit.LabeledSet` (the arrays the pure fit takes).

Rows arrive from `Store.labeled_rows` in batches (`LabeledBatch`: columns) and are packed into
numpy arrays batch by batch, so a million labels cost arrays plus the id strings, not a million
Python records. The option log-probs and answer indexes come from their packed columns, whole
batches at a time (service/store/features.py); a row whose hot features are not in those columns
(rows written before they existed and not migrated, or of an unusual shape) is read through its
`features` dict, with the same rules. Plain lists of `LabeledRow`s are accepted too.

Options mode (features written by `calibrators.scoring.OptionScore`):

* ``option_logprobs``: one row per item, padded with ``-inf`` to the widest option set; an
  option stored as ``null`` (a ``-inf`` logprob: the store keeps no infinities) is ``-inf``;
* ``labels``: the true option index from feedback with a ``label`` (or implied by ``correct``,
  see `service.feedback_rules`), ``-1`` when only top-label correctness is known, or when the
  named option has no finite logprob (the item then still counts through ``correct``);
* ``chosen``: the answer's index; ``correct``: 0/1.

Items that cannot be used are skipped and counted: no answer position, a chosen option without a
finite logprob, a sequence item without a raw confidence.

Signals (``features["signals"]``, `{name: number}`, e.g. visual reliance) become
``LabeledSet.signals`` columns (NaN where an item has none) when the caller asks for them
(``signals=True``: a refit whose policy has logistic feature sets). They live in the rest-of-
features JSON, so reading them costs a JSON decode per row; the newest batch decides: when none
of its rows carries a signal, older batches are not read for them (a new signal is recorded on
new traffic first) and the columns stay empty for the rest.

Mixed modes: a profile holds one mode, and a response of the other mode is served with the
identity calibration. So the fit takes the mode of the **majority** of the labeled items (the
one that calibrates most traffic); on a tie, the active profile's mode. The other mode's items
are left out and counted (``n_other_mode``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calibrators import MODES
from calibrators.refit import LabeledSet
from calibrators.scoring import MASKED_LOGPROB
from service.memory_trim import malloc_trim
from service.store import LabeledBatch, LabeledRow
from service.store.features import ANSWER_INDEX_KEY, LOGPROBS_KEY

__all__ = ["SIGNALS_KEY", "DatasetInfo", "build_labeled_set"]

#: Where an answer's named signals are recorded in its `features` (service/proxy/_confidence.py).
SIGNALS_KEY = "signals"


@dataclass
class DatasetInfo:
    """What went into a `LabeledSet` and what was left out."""

    mode: str
    n_rows: int = 0
    n_used: int = 0
    n_other_mode: int = 0
    n_unusable: int = 0
    n_option_labels: int = 0  # items with a true option index (multiclass NLL)
    n_correct_only: int = 0  # items known only as right/wrong (binary NLL)
    labels_until: object | None = None  # newest label time seen (datetime)
    by_mode: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "n_rows": self.n_rows,
            "n_used": self.n_used,
            "n_other_mode": self.n_other_mode,
            "n_unusable": self.n_unusable,
            "n_option_labels": self.n_option_labels,
            "n_correct_only": self.n_correct_only,
        }


def _pick(values: Sequence[Any], rows: list[int] | None) -> Sequence[Any]:
    return values if rows is None else [values[i] for i in rows]


def _kept(values: Sequence[Any], keep: np.ndarray) -> Sequence[Any]:
    return values if len(keep) == len(values) else [values[k] for k in keep]


def _from_features(features: dict[str, Any]) -> tuple[list[float], int] | None:
    """(log-prob vector, answer index) of a row read from its `features` dict, None when the
    answer has no position (the rules of the JSON-only store; a chosen option without a finite
    log-prob is caught later, with the packed rows)."""
    raw = features.get(LOGPROBS_KEY) or []
    answer = features.get(ANSWER_INDEX_KEY)
    if not raw or answer is None or not 0 <= int(answer) < len(raw):
        return None
    vector = [-math.inf if v is None or v <= MASKED_LOGPROB else float(v) for v in raw]
    return vector, int(answer)


class _Signals:
    """Named per-item signals as columns, NaN where an item has none."""

    def __init__(self) -> None:
        self.columns: dict[str, list[float]] = {}
        self.n = 0

    def add(self, values: Sequence[Any] | None, keep: Sequence[int] | np.ndarray) -> None:
        """The kept items' ``features["signals"]`` (``values`` None: none of them has any)."""
        if values is None:
            self.n += len(keep)
            return
        for k in keep:
            raw = values[k]
            if isinstance(raw, dict):
                for name, value in raw.items():
                    column = self.columns.get(name)
                    if column is None:
                        column = self.columns[name] = []
                    column.extend([math.nan] * (self.n - len(column)))
                    column.append(float(value) if isinstance(value, int | float) else math.nan)
            self.n += 1

    def build(self) -> dict[str, np.ndarray]:
        return {
            name: np.asarray([*values, *[math.nan] * (self.n - len(values))], dtype=np.float64)
            for name, values in self.columns.items()
        }


class _Options:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.chunks: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.chosen: list[np.ndarray] = []
        self.correct: list[np.ndarray] = []
        self.signals = _Signals()
        self.unusable = 0

    def add(
        self, batch: LabeledBatch, rows: list[int] | None, signals: Sequence[Any] | None
    ) -> None:
        """Pack the options-mode `rows` of `batch` (None: all of them)."""
        blobs = _pick(batch.option_logprobs, rows)
        answers = _pick(batch.answer_index, rows)
        n = len(blobs)
        widths = np.zeros(n, dtype=np.int64)
        chosen = np.full(n, -1, dtype=np.int64)
        by_size: dict[int, list[int]] = {}
        slow: dict[int, list[float]] = {}
        sizes = set(map(len, blobs)) if None not in blobs and None not in answers else set()
        if len(sizes) == 1:  # the usual batch: every row in the columns, one option count
            by_size[sizes.pop()] = list(range(n))
            chosen[:] = answers
            answers = ()  # nothing left for the row loop
        for k, (blob, answer) in enumerate(zip(blobs, answers, strict=False)):
            if blob is not None and answer is not None:
                by_size.setdefault(len(blob), []).append(k)
                chosen[k] = answer
                continue
            # Not (all) in the columns: the row's `features`, read as the JSON always was.
            found = _from_features(batch.features(k if rows is None else rows[k]))
            if found is not None:
                slow[k], chosen[k] = found
                widths[k] = len(slow[k])
        for size in by_size:
            if size % 8:
                raise ValueError(f"option_logprobs column holds {size} bytes, not float64s")
        seen = [size // 8 for size in by_size] + [len(vector) for vector in slow.values()]
        width = max(seen, default=1) or 1
        matrix = np.full((n, width), -np.inf)
        for size, ks in by_size.items():
            if size == 0:
                continue
            values = np.frombuffer(b"".join([blobs[k] for k in ks]), dtype="<f8")
            values = values.reshape(len(ks), size // 8)
            # NaN: a null log-prob; at or below MASKED_LOGPROB: vLLM's -inf (rows stored before
            # the scorer mapped it)
            values = np.where(np.isnan(values) | (values <= MASKED_LOGPROB), -np.inf, values)
            if len(ks) == n:
                matrix[:, : size // 8] = values
            else:
                matrix[ks, : size // 8] = values
            widths[ks] = size // 8
        for k, vector in slow.items():
            matrix[k, : len(vector)] = vector
        at = np.arange(n)
        usable = (chosen >= 0) & (chosen < widths)
        usable &= np.isfinite(matrix[at, np.where(usable, chosen, 0)])
        self.unusable += int(n - np.count_nonzero(usable))
        if not usable.any():
            return
        truth = np.array(
            [-1 if t is None else t for t in _pick(batch.true_index, rows)], dtype=np.int64
        )
        known = (truth >= 0) & (truth < widths)
        known &= np.isfinite(matrix[at, np.where(known, truth, 0)])
        keep = np.flatnonzero(usable)
        self.ids.extend(_kept(_pick(batch.ids, rows), keep))
        self.chunks.append(matrix[keep, : int(widths[keep].max())])
        self.labels.append(np.where(known, truth, -1)[keep])
        self.chosen.append(chosen[keep])
        correct = np.asarray(_pick(batch.correct, rows), dtype=np.float64)
        self.correct.append(correct[keep])
        self.signals.add(None if signals is None else _pick(signals, rows), keep)

    def build(self) -> LabeledSet:
        width = max((chunk.shape[1] for chunk in self.chunks), default=1)
        matrix = np.full((len(self.ids), width), -np.inf)
        start = 0
        for chunk in self.chunks:
            matrix[start : start + chunk.shape[0], : chunk.shape[1]] = chunk
            start += chunk.shape[0]
        return LabeledSet(
            ids=self.ids,
            mode="options",
            correct=_concat(self.correct, np.float64),
            option_logprobs=matrix,
            labels=_concat(self.labels, np.int64),
            chosen=_concat(self.chosen, np.int64),
            signals=self.signals.build(),
        )


class _Sequence:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.raw: list[np.ndarray] = []
        self.correct: list[np.ndarray] = []
        self.signals = _Signals()
        self.unusable = 0

    def add(
        self, batch: LabeledBatch, rows: list[int] | None, signals: Sequence[Any] | None
    ) -> None:
        raw = np.array(_pick(batch.raw_confidence, rows), dtype=np.float64)  # None: NaN
        usable = np.isfinite(raw)
        self.unusable += int(raw.size - np.count_nonzero(usable))
        keep = np.flatnonzero(usable)
        self.ids.extend(_kept(_pick(batch.ids, rows), keep))
        self.raw.append(raw[keep])
        self.correct.append(np.asarray(_pick(batch.correct, rows), dtype=np.float64)[keep])
        self.signals.add(None if signals is None else _pick(signals, rows), keep)

    def build(self) -> LabeledSet:
        return LabeledSet(
            ids=self.ids,
            mode="sequence",
            correct=_concat(self.correct, np.float64),
            raw_confidence=_concat(self.raw, np.float64),
            signals=self.signals.build(),
        )


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


def build_labeled_set(
    batches: Iterable[LabeledBatch | Sequence[LabeledRow]],
    *,
    preferred_mode: str = "options",
    mode: str | None = None,
    signals: bool = False,
) -> tuple[LabeledSet, DatasetInfo]:
    """Pack streamed rows into the arrays of the majority mode (ties: `preferred_mode`), or of
    `mode` when given (e.g. the active profile's, to evaluate it); with `signals`, also the
    recorded signals (see the module docstring)."""
    forced = mode
    packers: dict[str, _Options | _Sequence] = {"options": _Options(), "sequence": _Sequence()}
    counts: dict[str, int] = dict.fromkeys(MODES, 0)
    newest = None
    total = 0
    for rows in batches:
        batch = rows if isinstance(rows, LabeledBatch) else LabeledBatch.from_rows(rows)
        if not len(batch):
            continue
        total += len(batch)
        latest = batch.newest
        if newest is None or (latest is not None and latest > newest):
            newest = latest
        carried = batch.values(SIGNALS_KEY) if signals else None
        if carried is not None and not any(carried):
            carried, signals = None, False  # the newest rows carry none: stop looking
        modes = batch.modes
        for name in MODES:
            if modes.count(name) == len(modes):  # the usual case: one mode per batch
                counts[name] += len(modes)
                packers[name].add(batch, None, carried)
                break
        else:
            for name in MODES:
                picked = [i for i, m in enumerate(modes) if m == name]
                counts[name] += len(picked)
                if picked:
                    packers[name].add(batch, picked, carried)
    preferred = preferred_mode if preferred_mode in MODES else "options"
    other = "sequence" if preferred == "options" else "options"
    mode = other if counts[other] > counts[preferred] else preferred
    if forced in MODES:
        mode = forced
    packer = packers[mode]
    data = packer.build()
    unusable = packer.unusable
    del packers, packer
    # The per-batch parts just copied into `data` were freed into glibc's heap, interleaved
    # with what lives on; at 1M labels ~60 MB the fit could not reuse (its arrays are mmapped)
    # but RSS kept counting. Hand those pages back before the fit.
    malloc_trim()
    info = DatasetInfo(
        mode=mode,
        n_rows=total,
        n_used=len(data),
        n_other_mode=total - counts[mode],
        n_unusable=unusable,
        labels_until=newest,
        by_mode=counts,
    )
    if mode == "options" and data.labels is not None:
        info.n_option_labels = int(np.count_nonzero(data.labels >= 0))
        info.n_correct_only = len(data) - info.n_option_labels
    else:
        info.n_correct_only = len(data)
    return data, info
