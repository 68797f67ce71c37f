"""Labeled predictions → `calibrators.refit.LabeledSet` (the arrays the pure fit takes).

Rows arrive from `Store.labeled_rows` in batches and are packed into numpy arrays batch by
batch, so a million labels cost arrays plus the id strings, not a million Python records.

Options mode (features written by `calibrators.scoring.OptionScore`):

* ``option_logprobs``: one row per item, padded with ``-inf`` to the widest option set; an
  option stored as ``null`` (a ``-inf`` logprob: the store keeps no infinities) is ``-inf``;
* ``labels``: the true option index from feedback with a ``label`` (or implied by ``correct``,
  see `service.feedback_rules`), ``-1`` when only top-label correctness is known, or when the
  named option has no finite logprob (the item then still counts through ``correct``);
* ``chosen``: the answer's index; ``correct``: 0/1.

Items that cannot be used are skipped and counted: no answer position, a chosen option without a
finite logprob, a sequence item without a raw confidence.

Mixed modes: a profile holds one mode, and a response of the other mode is served with the
identity calibration. So the fit takes the mode of the **majority** of the labeled items (the
one that calibrates most traffic); on a tie, the active profile's mode. The other mode's items
are left out and counted (``n_other_mode``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from calibrators import MODES
from calibrators.refit import LabeledSet
from service.store import LabeledRow

__all__ = ["DatasetInfo", "build_labeled_set"]


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


class _Signals:
    """Named per-item signals (`features["signals"]`) as columns, NaN where an item has none."""

    def __init__(self) -> None:
        self.columns: dict[str, list[float]] = {}
        self.n = 0

    def add(self, features: dict[str, object] | None) -> None:
        raw = (features or {}).get("signals")
        signals = raw if isinstance(raw, dict) else {}
        for name, value in signals.items():
            column = self.columns.get(name)
            if column is None:
                column = self.columns[name] = [math.nan] * self.n
            column.append(float(value) if isinstance(value, int | float) else math.nan)
        self.n += 1
        for column in self.columns.values():
            if len(column) < self.n:
                column.append(math.nan)

    def build(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(values, dtype=np.float64) for name, values in self.columns.items()}


class _Options:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.chunks: list[np.ndarray] = []
        self.labels: list[int] = []
        self.chosen: list[int] = []
        self.correct: list[float] = []
        self.signals = _Signals()
        self.unusable = 0

    def add(self, rows: list[LabeledRow]) -> None:
        vectors: list[list[float]] = []
        for row in rows:
            features = row.features or {}
            raw = features.get("option_logprobs") or []
            chosen = features.get("answer_index")
            if not raw or chosen is None or not 0 <= int(chosen) < len(raw):
                self.unusable += 1
                continue
            vector = [-math.inf if value is None else float(value) for value in raw]
            if not math.isfinite(vector[int(chosen)]):
                self.unusable += 1
                continue
            label = row.true_index
            if label is None or not 0 <= label < len(vector) or not math.isfinite(vector[label]):
                label = -1
            self.ids.append(row.id)
            vectors.append(vector)
            self.labels.append(int(label))
            self.chosen.append(int(chosen))
            self.correct.append(1.0 if row.correct else 0.0)
            self.signals.add(features)
        if vectors:
            width = max(len(vector) for vector in vectors)
            chunk = np.full((len(vectors), width), -np.inf)
            for i, vector in enumerate(vectors):
                chunk[i, : len(vector)] = vector
            self.chunks.append(chunk)

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
            correct=np.asarray(self.correct, dtype=np.float64),
            option_logprobs=matrix,
            labels=np.asarray(self.labels, dtype=np.int64),
            chosen=np.asarray(self.chosen, dtype=np.int64),
            signals=self.signals.build(),
        )


class _Sequence:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.raw: list[float] = []
        self.correct: list[float] = []
        self.signals = _Signals()
        self.unusable = 0

    def add(self, rows: list[LabeledRow]) -> None:
        for row in rows:
            raw = row.raw_confidence
            if raw is None or not math.isfinite(raw):
                self.unusable += 1
                continue
            self.ids.append(row.id)
            self.raw.append(float(raw))
            self.correct.append(1.0 if row.correct else 0.0)
            self.signals.add(row.features)

    def build(self) -> LabeledSet:
        return LabeledSet(
            ids=self.ids,
            mode="sequence",
            correct=np.asarray(self.correct, dtype=np.float64),
            raw_confidence=np.asarray(self.raw, dtype=np.float64),
            signals=self.signals.build(),
        )


def build_labeled_set(
    batches: Iterable[list[LabeledRow]],
    *,
    preferred_mode: str = "options",
    mode: str | None = None,
) -> tuple[LabeledSet, DatasetInfo]:
    """Pack streamed rows into the arrays of the majority mode (ties: `preferred_mode`), or of
    `mode` when given (e.g. the active profile's, to evaluate it)."""
    forced = mode
    packers: dict[str, _Options | _Sequence] = {"options": _Options(), "sequence": _Sequence()}
    counts: dict[str, int] = dict.fromkeys(MODES, 0)
    newest = None
    total = 0
    for batch in batches:
        total += len(batch)
        by_mode: dict[str, list[LabeledRow]] = {mode: [] for mode in MODES}
        for row in batch:
            if row.mode in by_mode:
                by_mode[row.mode].append(row)
            if newest is None or row.labeled_at > newest:
                newest = row.labeled_at
        for mode, rows in by_mode.items():
            counts[mode] += len(rows)
            if rows:
                packers[mode].add(rows)
    preferred = preferred_mode if preferred_mode in MODES else "options"
    other = "sequence" if preferred == "options" else "options"
    mode = other if counts[other] > counts[preferred] else preferred
    if forced in MODES:
        mode = forced
    packer = packers[mode]
    data = packer.build()
    info = DatasetInfo(
        mode=mode,
        n_rows=total,
        n_used=len(data),
        n_other_mode=total - counts[mode],
        n_unusable=packer.unusable,
        labels_until=newest,
        by_mode=counts,
    )
    if mode == "options" and data.labels is not None:
        info.n_option_labels = int(np.count_nonzero(data.labels >= 0))
        info.n_correct_only = len(data) - info.n_option_labels
    else:
        info.n_correct_only = len(data)
    return data, info
