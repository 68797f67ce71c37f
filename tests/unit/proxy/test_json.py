"""The request path's JSON decoder (service/proxy/_body.py `loads`): msgspec for speed, and
always the values `json.loads` gives — including for what msgspec refuses, which `json` takes
(or refuses with its own error, which the callers turn into their 400/502)."""

from __future__ import annotations

import json
import math

import pytest

from service.errors import APIError
from service.proxy import parse_json_body
from service.proxy._body import loads

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
