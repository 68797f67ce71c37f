"""Values as every backend stores them: the JSON columns' one encoding rule."""

from __future__ import annotations

import contextlib
import math
from typing import Any


def json_safe(value: Any) -> Any:
    """JSON that every backend accepts: NaN/±inf become null (PostgreSQL's JSON has neither,
    and a -inf logprob is common), numpy scalars become Python numbers."""
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
