"""How a prediction's `features` dict is stored: hot keys in columns, the rest as JSON.

A refit reads the option log-probabilities and the answer index of up to a million predictions;
decoding them from JSON, row by row, was a third of a refit's time. So those two keys, when they
have their usual shape, live in columns of their own that load as arrays:

* ``option_logprobs`` — a list of floats (``None`` allowed) — as ``predictions.option_logprobs``,
  little-endian float64 packed back to back (8 bytes per option). float64, not float32: the
  values must come back exactly as given. A ``None`` (a non-finite log-prob: JSON has no
  infinities, so the store always kept ``-inf`` as ``null``) is stored as NaN and read back as
  ``None``, exactly as before;
* ``answer_index`` — an int — as ``predictions.answer_index``.

Every other key, and a hot key of any other shape (``answer_index: None``, a list holding a
string...), stays in the JSON column ``features``, as before. A hot key lives in exactly one
place: a column that is not NULL holds the key, and the JSON then does not. Reading merges both,
so `features` round-trips exactly as when it was all JSON (`json_safe` rules first).
"""

from __future__ import annotations

import math
import sys
from array import array
from typing import Any

import numpy as np

from service.store.rows import json_safe

LOGPROBS_KEY = "option_logprobs"
ANSWER_INDEX_KEY = "answer_index"
HOT_KEYS = (LOGPROBS_KEY, ANSWER_INDEX_KEY)

# NULL-free float64 blobs: a missing (non-finite) log-prob is this NaN.
_NAN = math.nan
_INT32 = (-(2**31), 2**31 - 1)  # PostgreSQL INTEGER
_LITTLE_ENDIAN = sys.byteorder == "little"


Split = tuple[dict[str, Any], bytes | None, int | None]


def split_features(features: dict[str, Any] | None) -> Split:
    """(JSON-safe rest, packed option log-probs or None, answer index or None).

    None for a hot value means "not in a column": the key, if present, is in the rest.
    """
    rest = json_safe(features or {})
    if not isinstance(rest, dict):  # not a dict: stored as given, as always
        return rest, None, None
    blob = pack_logprobs(rest.get(LOGPROBS_KEY))
    if blob is not None:
        del rest[LOGPROBS_KEY]
    index = rest.get(ANSWER_INDEX_KEY)
    if type(index) is int and _INT32[0] <= index <= _INT32[1]:
        del rest[ANSWER_INDEX_KEY]
    else:
        index = None
    return rest, blob, index


def pack_logprobs(values: Any) -> bytes | None:
    """Packed float64 for a list of floats / Nones (already `json_safe`); None for anything else."""
    if type(values) is not list:
        return None
    packed = array("d")
    for value in values:
        if isinstance(value, float) and math.isfinite(value):  # json_safe: never non-finite
            packed.append(value)
        elif value is None:
            packed.append(_NAN)
        else:  # an int, a bool, a string...: JSON keeps its exact type
            return None
    if packed.itemsize != 8:  # pragma: no cover - every CPython platform has an 8-byte double
        return None
    if not _LITTLE_ENDIAN:  # pragma: no cover
        packed.byteswap()
    return packed.tobytes()


def unpack_logprobs(blob: bytes) -> list[float | None]:
    """The list `pack_logprobs` packed: NaN back to ``None``."""
    return [None if value != value else value for value in logprob_array(blob).tolist()]


def logprob_array(blob: bytes | memoryview) -> np.ndarray:
    """The packed values as a float64 array (NaN where the value was ``None``)."""
    if len(blob) % 8:
        raise ValueError(f"option_logprobs column holds {len(blob)} bytes, not a float64 array")
    return np.frombuffer(blob, dtype="<f8")


def merge_features(
    rest: dict[str, Any] | None, blob: bytes | memoryview | None, index: int | None
) -> dict[str, Any]:
    """The `features` dict as it was given (after `json_safe`): the JSON rest plus the columns."""
    features = dict(rest) if rest else {}
    if blob is not None:
        features[LOGPROBS_KEY] = unpack_logprobs(blob)
    if index is not None:
        features[ANSWER_INDEX_KEY] = int(index)
    return features
