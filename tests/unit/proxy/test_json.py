"""The request path's JSON decoder (service/proxy/_body.py `loads`): msgspec for speed, and
always the values `json.loads` gives — including for what msgspec refuses, which `json` takes
(or refuses with its own error, which the callers turn into their 400/502)."""

from __future__ import annotations

import json
import math

import pytest

from service.errors import APIError
from service.proxy import parse_json_body
from service.proxy._body import compact_json, json_encoder, loads

SAME_AS_JSON = [
    b'{"a": 1, "b": [1.5, -0.0, 1e-7, 1E2, 123456789012345678901234567890], "c": null}',
    b'{"a": 1, "a": 2}',  # duplicate keys: the last wins in both
    b'{"t": "caf\\u00e9 \\ud83d\\ude00 \xe2\x96\x81B"}',  # escapes, a surrogate pair, UTF-8
    b'{"x": 1.00000000000000011102230246251565404236316680908203125}',  # a halfway float
    b'{"nan": NaN, "inf": Infinity, "ninf": -Infinity}',  # msgspec refuses: json's floats
    b'{"lone": "\\ud800"}',  # a lone surrogate escape: msgspec refuses, json keeps it
    b'{"big": 1e400}',  # beyond float range: json reads inf
    b'\xef\xbb\xbf{"bom": true}',  # a UTF-8 BOM: json skips it
    '{"utf16": "é"}'.encode("utf-16"),  # json detects UTF-16
    b'  [1, {"k": []}]  ',
]


@pytest.mark.parametrize("raw", SAME_AS_JSON)
def test_loads_gives_what_json_gives(raw: bytes) -> None:
    got, want = loads(raw), json.loads(raw)
    assert json.dumps(got, allow_nan=True) == json.dumps(want, allow_nan=True)
    assert type(got) is type(want)


def test_nan_and_infinity_stay_floats() -> None:
    got = loads(b'{"nan": NaN, "inf": Infinity}')
    assert math.isnan(got["nan"]) and got["inf"] == math.inf


@pytest.mark.parametrize("raw", [b'{"a": 1,}', b'{"a": 01}', b'{"a": "\xff"}', b"", b"{"])
def test_what_neither_accepts_raises_json_s_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(raw)
    with pytest.raises(ValueError):
        loads(raw)


def test_request_body_errors_keep_their_messages() -> None:
    with pytest.raises(APIError) as bad:
        parse_json_body(b'{"model": "m",}')
    assert bad.value.status == 400 and "not valid JSON" in bad.value.message
    with pytest.raises(APIError) as binary:
        parse_json_body(b'{"model": "\xff"}')
    assert "not valid UTF-8" in binary.value.message


# The request path's encoders (`json_encoder`): built once, text for text what `json.dumps`
# with the same arguments gives — the response bytes and the stored prompt hashes depend on it.
ENCODED = [
    {"b": 1, "a": [1.5, -0.0, 1e-05, 1e16, 0.1 + 0.2, 123456789012345678901234567890]},
    {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "t": True, "f": False, "n": None},
    {"t": 'café 😀 ▁B \u2028 \x00 "quoted" \\ back', "lone": "\ud800"},
    [{"role": "user", "content": [{"type": "text", "text": "A?"}, {"z": 1, "y": {"x": []}}]}],
    "just a string",
    12,
    {2: "int key", "1": "str key"},
    {"float key": {1.5: "x"}},
]


@pytest.mark.parametrize("obj", ENCODED)
@pytest.mark.parametrize(
    ("separators", "sort_keys"), [((",", ":"), False), ((", ", ": "), True), ((",", ":"), True)]
)
def test_reused_encoders_give_what_json_dumps_gives(
    obj: object, separators: tuple[str, str], sort_keys: bool
) -> None:
    encode = json_encoder(separators, sort_keys=sort_keys)
    try:
        want = json.dumps(obj, separators=separators, sort_keys=sort_keys, ensure_ascii=False)
    except TypeError:  # keys of mixed types cannot be sorted: the same error
        with pytest.raises(TypeError):
            encode(obj)
        return
    assert encode(obj) == want
    assert encode(obj) == want  # reused: no state carried over


def test_the_compact_encoder_refuses_what_json_dumps_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        compact_json({"x": object()})
    with pytest.raises(TypeError):
        json.dumps({"x": object()})
