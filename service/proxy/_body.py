"""Reading and checking OpenAI request bodies: only the fields the gateway touches.

The body is parsed once into a plain dict and forwarded as that dict, so fields we do not know
(vLLM's extra sampling parameters, future OpenAI fields) pass through untouched. We validate what
we read or rewrite — `model`, `messages`/`prompt`, `stream`, `n`, `logprobs`, `top_logprobs`,
image parts — and answer 400 in OpenAI's shape for anything wrong, before the upstream sees it.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from service.errors import APIError

__all__ = [
    "LogprobWish",
    "check_chat",
    "check_completions",
    "check_content_type",
    "compact_json",
    "data_url_bytes",
    "dumps",
    "json_encoder",
    "loads",
    "parse_json_body",
    "validate_image_parts",
]

MAX_TOP_LOGPROBS = 20


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def check_content_type(content_type: str | None) -> None:
    """JSON bodies only: a declared non-JSON content type is a 415 (absent is tolerated)."""
    if not content_type:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return
    raise APIError(
        415,
        f"Unsupported Content-Type {media!r}: send the body as application/json.",
        code="unsupported_media_type",
    )


# Decoding on the request path: msgspec's decoder, about 2.5x faster than `json` on an engine
# answer with top-20 logprobs (~1,000 objects; its decode was the largest block of the gateway's
# CPU per request, docs/performance.md). `json` stays the reference: for every document both
# accept they give equal values (floats correctly rounded by both), and msgspec hands over
# whatever it refuses, so the result is always what `json.loads` gives.
_DECODE = msgspec.json.Decoder().decode


def loads(raw: bytes | str) -> Any:
    """Decode JSON exactly as `json.loads` does, fast. msgspec refuses (and `json` then takes)
    `NaN` and `Infinity`, lone surrogate escapes, numbers beyond float range and bodies that are
    not UTF-8 (`json` reads UTF-16/32 and a UTF-8 BOM, or raises its own `ValueError`)."""
    try:
        return _DECODE(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return json.loads(raw)


def json_encoder(
    separators: tuple[str, str] = (",", ":"), *, sort_keys: bool = False
) -> Callable[[Any], str]:
    """`json.dumps(obj, separators=..., sort_keys=..., ensure_ascii=False)` as one reusable
    function, text for text equal to it.

    `json.dumps` with any argument builds a `JSONEncoder` and a C encoder on every call (~2 µs,
    three calls per request); this builds them once. No circular-reference check: what the
    gateway encodes came from JSON or is its own flat objects (a cycle would end in
    `RecursionError` instead of `ValueError`).
    """
    base = json.JSONEncoder(
        ensure_ascii=False, check_circular=False, separators=separators, sort_keys=sort_keys
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython without its _json accelerator
        return base.encode
    item_separator, key_separator = separators
    encode = make(
        None,
        base.default,
        json.encoder.encode_basestring,
        None,
        key_separator,
        item_separator,
        sort_keys,
        False,
        True,
    )

    def dumps(obj: Any) -> str:
        return "".join(encode(obj, 0))

    return dumps


compact_json = json_encoder()


def dumps(obj: Any) -> bytes:
    """Compact JSON for a response; ASCII escapes if a string holds a lone surrogate (an
    upstream escape), which UTF-8 cannot encode."""
    text = compact_json(obj)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Parse the request body; it must be one JSON object."""
    if not raw:
        raise _bad("The request body is empty; expected a JSON object.")
    try:
        body = loads(raw)
    except UnicodeDecodeError:
        raise _bad("The request body is not valid UTF-8.") from None
    except ValueError as exc:
        raise _bad(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    return body


@dataclass(frozen=True, slots=True)
class LogprobWish:
    """What the client itself asked for, so the response can be trimmed back to it.

    `enabled`: the client wants logprobs at all; `top`: how many alternatives per token.
    The rest decides how vLLM itself would have shaped prompt logprobs and top lists (the gateway
    raises `logprobs`/`top_logprobs`, which with `echo` also raises vLLM's prompt logprobs):
    `echo` (vLLM echoes the prompt), `prompt_logprobs` (the client's own value, None = unset),
    `listed` (the client named `logprob_token_ids`: vLLM returns exactly those, nothing to trim).
    """

    enabled: bool
    top: int
    echo: bool = False
    prompt_logprobs: int | None = None
    listed: bool = False


def _vllm_extras(body: dict[str, Any]) -> tuple[bool, int | None, bool]:
    """vLLM's own fields that change the logprobs it returns; malformed ones are the engine's
    to reject (they only matter here when they are well-formed)."""
    prompt_logprobs = body.get("prompt_logprobs")
    if isinstance(prompt_logprobs, bool) or not isinstance(prompt_logprobs, int):
        prompt_logprobs = None
    return body.get("echo") is True, prompt_logprobs, bool(body.get("logprob_token_ids"))


def _int_in(body: dict[str, Any], key: str, lo: int, hi: int | None) -> int | None:
    value: object = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"`{key}` must be an integer.", key)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise _bad(f"`{key}` must be {bound} (got {value}).", key)
    return value


def _check_common(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise _bad("You must provide a `model` parameter.", "model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("`model` must be a non-empty string.", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("`stream` must be a boolean.", "stream")
    _int_in(body, "n", 1, 128)
    return model


def check_chat(body: dict[str, Any]) -> tuple[str, LogprobWish]:
    """Validate a chat completion body; return (model, the client's logprob wish)."""
    model = _check_common(body)
    messages = body.get("messages")
    if messages is None:
        raise _bad("You must provide `messages`.", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("`messages` must be a non-empty array.", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"`messages[{i}]` must be an object.", f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise _bad(f"`messages[{i}].role` must be a non-empty string.", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(
                f"`messages[{i}].content` must be a string or an array of content parts.",
                f"messages[{i}].content",
            )
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _bad(
                        f"`messages[{i}].content[{j}]` must be an object with a `type`.",
                        f"messages[{i}].content[{j}]",
                    )
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _bad("`logprobs` must be a boolean.", "logprobs")
    top = _int_in(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    enabled = bool(logprobs)
    return model, LogprobWish(enabled, (top or 0) if enabled else 0, *_vllm_extras(body))


def check_completions(body: dict[str, Any]) -> tuple[str, LogprobWish]:
    """Validate a legacy completion body; return (model, the client's logprob wish)."""
    model = _check_common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("You must provide a `prompt`.", "prompt")
    ok = isinstance(prompt, str) or (
        isinstance(prompt, list)
        and prompt
        and (
            all(isinstance(p, str) for p in prompt)
            or all(isinstance(p, int) and not isinstance(p, bool) for p in prompt)
            or all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt)
        )
    )
    if not ok:
        raise _bad("`prompt` must be a string, an array of strings, or token ids.", "prompt")
    logprobs = _int_in(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise _bad("`echo` must be a boolean.", "echo")
    return model, LogprobWish(logprobs is not None, logprobs or 0, *_vllm_extras(body))


# ------------------------------------------------------------------- image content parts
# Validation of image content parts before a request is forwarded.
#
# Image parts (`{"type": "image_url", "image_url": {"url": ...}}`) are forwarded untouched. Only
# their URL is checked, so a malformed one is a 400 from us instead of an opaque failure deep in
# the engine:
#
# - `http://` and `https://` URLs pass as they are (the engine fetches them);
# - `data:` URLs must be `data:image/<subtype>;base64,<payload>` with a non-empty payload that is
#   valid base64 (strict alphabet, correct padding);
# - any other scheme (`file:`, `ftp:`, ...) is refused: the gateway must not let callers make the
#   engine read its own disk.

_DATA_URL_RE = re.compile(r"^data:(image/[A-Za-z0-9.+\-]+)((?:;[A-Za-z0-9\-]+=[^;,]*)*);base64,")


def _bad_image(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_image_url")


def validate_image_parts(messages: list[Any], decoded: list[bytes] | None = None) -> int:
    """Check every image part of chat `messages`; return the total data-URL payload size.

    Raises `APIError(400)` at the first malformed part. Cheap for http(s) URLs; data URLs are
    base64-decoded once (the caller runs this off the event loop when the payload is large) and,
    with `decoded` given, their bytes appended to it (the input-shift gauge embeds them later).
    """
    total = 0
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            param = f"messages[{i}].content[{j}].image_url"
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise _bad_image("An image_url part needs a non-empty `url` string.", param)
            total += _check_url(url, param, decoded)
    return total


def _check_url(url: str, param: str, decoded: list[bytes] | None = None) -> int:
    head = url[:16].lower()
    if head.startswith(("http://", "https://")):
        return 0
    if not head.startswith("data:"):
        scheme = url.split(":", 1)[0][:20] if ":" in url else "(none)"
        raise _bad_image(
            f"Unsupported image URL scheme {scheme!r}: use http(s) or a data: URL.", param
        )
    data = data_url_bytes(url, param)
    if decoded is not None:
        decoded.append(data)
    return len(data)


def data_url_bytes(url: str, param: str = "image_url") -> bytes:
    """Decode a `data:image/...;base64,...` URL, or raise a 400 saying what is wrong."""
    match = _DATA_URL_RE.match(url)
    if match is None:
        if ";base64," not in url[:300]:
            raise _bad_image(
                "Image data URLs must be base64-encoded (data:image/<type>;base64,...).", param
            )
        raise _bad_image("Image data URLs must have an image/* media type.", param)
    payload = url[match.end() :]
    if not payload:
        raise _bad_image("The image data URL has an empty payload.", param)
    # strict_mode still accepts excess padding ("QUJD=") on Python 3.11: check the length too.
    if len(payload) % 4 or len(payload) - len(payload.rstrip("=")) > 2:
        raise _bad_image(
            "The image data URL payload is not valid base64 (bad length or padding).", param
        )
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _bad_image("The image data URL payload is not valid base64.", param) from None
    if not data:
        raise _bad_image("The image data URL has an empty payload.", param)
    return data
