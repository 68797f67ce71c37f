"""Validation of image content parts before a request is forwarded.

Image parts (`{"type": "image_url", "image_url": {"url": ...}}`) are forwarded untouched. Only
their URL is checked, so a malformed one is a 400 from us instead of an opaque failure deep in
the engine:

- `http://` and `https://` URLs pass as they are (the engine fetches them);
- `data:` URLs must be `data:image/<subtype>;base64,<payload>` with a non-empty payload that is
  valid base64 (strict alphabet, correct padding);
- any other scheme (`file:`, `ftp:`, ...) is refused: the gateway must not let callers make the
  engine read its own disk.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from service.errors import APIError

__all__ = ["data_url_bytes", "validate_image_parts"]

_DATA_URL_RE = re.compile(r"^data:(image/[A-Za-z0-9.+\-]+)((?:;[A-Za-z0-9\-]+=[^;,]*)*);base64,")


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_image_url")


def validate_image_parts(messages: list[Any]) -> int:
    """Check every image part of chat `messages`; return the total data-URL payload size.

    Raises `APIError(400)` at the first malformed part. Cheap for http(s) URLs; data URLs are
    base64-decoded once (the caller runs this off the event loop when the payload is large).
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
                raise _bad("An image_url part needs a non-empty `url` string.", param)
            total += _check_url(url, param)
    return total


def _check_url(url: str, param: str) -> int:
    head = url[:16].lower()
    if head.startswith(("http://", "https://")):
        return 0
    if not head.startswith("data:"):
        scheme = url.split(":", 1)[0][:20] if ":" in url else "(none)"
        raise _bad(f"Unsupported image URL scheme {scheme!r}: use http(s) or a data: URL.", param)
    return len(data_url_bytes(url, param))


def data_url_bytes(url: str, param: str = "image_url") -> bytes:
    """Decode a `data:image/...;base64,...` URL, or raise a 400 saying what is wrong."""
    match = _DATA_URL_RE.match(url)
    if match is None:
        if ";base64," not in url[:300]:
            raise _bad(
                "Image data URLs must be base64-encoded (data:image/<type>;base64,...).", param
            )
        raise _bad("Image data URLs must have an image/* media type.", param)
    payload = url[match.end() :]
    if not payload:
        raise _bad("The image data URL has an empty payload.", param)
    # strict_mode still accepts excess padding ("QUJD=") on Python 3.11: check the length too.
    if len(payload) % 4 or len(payload) - len(payload.rstrip("=")) > 2:
        raise _bad("The image data URL payload is not valid base64 (bad length or padding).", param)
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _bad("The image data URL payload is not valid base64.", param) from None
    if not data:
        raise _bad("The image data URL has an empty payload.", param)
    return data
