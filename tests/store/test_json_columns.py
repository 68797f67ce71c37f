"""The JSON columns' serializer (`service.store.rows.json_dumps`, the engine's
`json_serializer`): built once, and text for text what `json.dumps` gives, so rows stored before
and after it are alike."""

from __future__ import annotations

import json
import math

import pytest

from service.store.rows import json_dumps, json_safe

VALUES = [
    None,
    {"options": ["A", "B"], "option_logprobs": [-1.5, None, -0.0], "answer_index": 1},
    {"input_embedding_text": [0.1491, -0.2981, 0.0, 1e-05, 123456789.25]},
    {"text": 'café 😀 \u2028 "q" \\ \x00', "lone": "\ud800", "nested": {"b": [True, False]}},
    ["A", "B", "C", "D"],
    {"nan": math.nan, "inf": math.inf, 2: "int key"},
    "a string",
    12,
]


@pytest.mark.parametrize("value", VALUES)
def test_json_dumps_is_json_dumps(value: object) -> None:
    assert json_dumps(value) == json.dumps(value)
    safe = json_safe(value)
    assert json_dumps(safe) == json.dumps(safe)
