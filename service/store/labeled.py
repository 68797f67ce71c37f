"""`LabeledBatch`: one batch of labeled predictions as columns, decoded only when asked.

A refit of a million labels needs a few numbers per row; building a million `LabeledRow`s with
their `features` dicts (JSON decoded, timestamps parsed) was most of its time. A batch keeps
what the driver returned, column by column, and hands out:

* the hot features as arrays (`option_logprob_rows`, `answer_index`), straight from their
  packed columns (service/store/features.py);
* any other feature key through `features(i)` / `values(key)`, the JSON decoded per row on demand;
* `LabeledRow`s when iterated or indexed, with the same `features` as `Store.get_prediction`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, overload

from service.store.features import ANSWER_INDEX_KEY, LOGPROBS_KEY, merge_features, unpack_logprobs
from service.store.records import LabeledRow

__all__ = ["LabeledBatch"]


def _identity(value: Any) -> Any:
    return value


@dataclass(eq=False)
class LabeledBatch(Sequence[LabeledRow]):
    """Labeled predictions in store order (newest labels first), one sequence per column.

    ``option_logprobs[i]`` is row i's packed float64 log-probs (None: not in the column, see
    `features`); ``answer_index[i]`` likewise; ``features_json[i]`` the JSON text of the other
    feature keys. Use `features(i)` for row i's whole `features` dict.
    """

    ids: Sequence[str]
    modes: Sequence[str]
    raw_confidence: Sequence[float | None]
    correct: Sequence[bool | int]  # SQLite: 0/1
    true_index: Sequence[int | None]
    option_logprobs: Sequence[bytes | None]
    answer_index: Sequence[int | None]
    features_json: Sequence[str | dict[str, Any] | None]
    labeled_at_raw: Sequence[Any]
    #: The driver's timestamp → aware UTC datetime (parsed only for the rows that need it).
    to_datetime: Callable[[Any], datetime] = field(default=_identity, repr=False)
    #: ids → their `features` JSON text, for rows whose ``features_json`` was not fetched
    #: (None: every row's was). The store reads it only for rows whose hot keys are not all in
    #: their columns, so a refit never carries the other keys' JSON through its sort.
    load_json: Callable[[Sequence[str]], dict[str, str]] | None = field(default=None, repr=False)
    _loaded: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_rows(cls, rows: Sequence[LabeledRow]) -> LabeledBatch:
        """A batch of rows already built (their `features` dicts kept as they are)."""
        n = len(rows)
        return cls(
            ids=[row.id for row in rows],
            modes=[row.mode for row in rows],
            raw_confidence=[row.raw_confidence for row in rows],
            correct=[row.correct for row in rows],
            true_index=[row.true_index for row in rows],
            option_logprobs=[None] * n,
            answer_index=[None] * n,
            features_json=[row.features for row in rows],
            labeled_at_raw=[row.labeled_at for row in rows],
        )

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> LabeledRow: ...
    @overload
    def __getitem__(self, index: slice) -> list[LabeledRow]: ...
    def __getitem__(self, index: int | slice) -> LabeledRow | list[LabeledRow]:
        if isinstance(index, slice):
            return [self._row(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._row(index)

    def __iter__(self) -> Iterator[LabeledRow]:
        return (self._row(i) for i in range(len(self)))

    def _row(self, i: int) -> LabeledRow:
        return LabeledRow(
            id=self.ids[i],
            mode=self.modes[i],
            raw_confidence=self.raw_confidence[i],
            features=self.features(i),
            correct=bool(self.correct[i]),
            true_index=self.true_index[i],
            labeled_at=self.to_datetime(self.labeled_at_raw[i]),
        )

    def features(self, i: int) -> dict[str, Any]:
        """Row i's `features`, exactly as `Store.get_prediction` returns them."""
        return merge_features(_decode(self._json(i)), self.option_logprobs[i], self.answer_index[i])

    def _json(self, i: int) -> str | dict[str, Any] | None:
        text = self.features_json[i]
        if text is not None or self.load_json is None:
            return text
        if not self._loaded:  # the whole batch at once: one query, not one per row
            missing = [id for id, t in zip(self.ids, self.features_json, strict=True) if t is None]
            self._loaded.update(self.load_json(missing))
        return self._loaded.get(self.ids[i])

    def values(self, key: str) -> list[Any]:
        """Each row's ``features.get(key)``; the JSON is decoded only for keys not in a column."""
        if key == LOGPROBS_KEY:
            blobs = self.option_logprobs
            return [
                unpack_logprobs(blob) if blob is not None else self.features(i).get(key)
                for i, blob in enumerate(blobs)
            ]
        if key == ANSWER_INDEX_KEY:
            return [
                value if value is not None else self.features(i).get(key)
                for i, value in enumerate(self.answer_index)
            ]
        return [_decode(self._json(i)).get(key) for i in range(len(self))]

    @property
    def newest(self) -> datetime | None:
        """The newest label time in the batch (one timestamp parsed, not one per row)."""
        if not self.labeled_at_raw:
            return None
        # SQLite returns SQLAlchemy's fixed-width "YYYY-MM-DD HH:MM:SS[.ffffff]" text (its
        # order is time order, and the query sorts by it); PostgreSQL returns datetimes.
        return self.to_datetime(max(self.labeled_at_raw))


def _decode(text: str | bytes | dict[str, Any] | None) -> dict[str, Any]:
    if text is None:
        return {}
    if isinstance(text, dict):  # rows built in Python (`from_rows`)
        return text
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
