"""Values as every backend stores them: the JSON columns' one encoding rule."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from typing import Any


def _json_dumps() -> Callable[[Any], str]:
    """`json.dumps` with its defaults, built once: the JSON columns' serializer (the engine's
    `json_serializer`). `json.dumps` builds its C encoder on every call, ~1 µs of the ~3 JSON
    values of every prediction stored; the text is the same (no circular-reference check:
    stored values come from JSON or `json_safe`)."""
    base = json.JSONEncoder(check_circular=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython without its _json accelerator
        return json.dumps
    ascii_string = json.encoder.encode_basestring_ascii
    encode = make(None, base.default, ascii_string, None, ": ", ", ", False, False, True)

    def dumps(obj: Any) -> str:
        return "".join(encode(obj, 0))

    return dumps


json_dumps = _json_dumps()

_isfinite = math.isfinite
# Exact types that are stored as they are (subclasses take the general path below).
_AS_IS = frozenset({str, int, bool, type(None)})


def json_safe(value: Any) -> Any:
    """JSON that every backend accepts: NaN/±inf become null (PostgreSQL's JSON has neither,
    and a -inf logprob is common), numpy scalars become Python numbers."""
    kind = type(value)
    # Exact built-in types first, without a call per item: a prediction's features hold lists
    # of dozens of floats (the input embeddings), and this runs for every prediction stored.
    if kind is float:
        return value if _isfinite(value) else None
    if kind in _AS_IS:
        return value
    if kind is dict:
        return {
            key if type(key) is str else str(key): json_safe(item) for key, item in value.items()
        }
    if kind is list or kind is tuple:
        return _safe_list(value)
    return _json_safe_other(value)


def _safe_list(values: list[Any] | tuple[Any, ...]) -> list[Any]:
    out = []
    for item in values:
        kind = type(item)
        if kind is float:
            out.append(item if _isfinite(item) else None)
        elif kind in _AS_IS:
            out.append(item)
        else:
            out.append(json_safe(item))
    return out


def _json_safe_other(value: Any) -> Any:
    """Subclasses of the built-in types, numpy values and anything else."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item):
        with contextlib.suppress(TypeError, ValueError):
            return json_safe(item())
    tolist = getattr(value, "tolist", None)  # numpy array
    if callable(tolist):
        return json_safe(tolist())
    return value
