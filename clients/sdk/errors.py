"""Typed errors raised by the SDK, carrying the server's OpenAI-shaped error message."""

from __future__ import annotations

from typing import Any


class CalibError(Exception):
    """Base class of every SDK error."""


class APIConnectionError(CalibError):
    """The gateway could not be reached (after retries)."""


class APIStatusError(CalibError):
    """The gateway answered with an error status; `message`/`type`/`param`/`code` are its words."""

    status_code: int = 0

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status_code} {type or 'error'}: {message}")
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.body = body


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401."""


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404."""


class ConflictError(APIStatusError):
    """409: e.g. a second, different label for the same prediction."""


class RequestTooLargeError(APIStatusError):
    """413."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429."""


class InternalServerError(APIStatusError):
    """500 and other 5xx not listed below."""


class UpstreamError(APIStatusError):
    """502 or 504: the engine behind the gateway failed or timed out."""


class ServiceUnavailableError(APIStatusError):
    """503: e.g. the store is briefly unavailable; retry later."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    502: UpstreamError,
    503: ServiceUnavailableError,
    504: UpstreamError,
}


def error_from_response(status_code: int, body: Any) -> APIStatusError:
    """Build the typed error for an error response body (OpenAI shape or anything else)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        kwargs = {key: error.get(key) for key in ("type", "param", "code")}
    else:
        message, kwargs = (str(body)[:500] if body is not None else ""), {}
    cls = _BY_STATUS.get(status_code, InternalServerError if status_code >= 500 else APIStatusError)
    return cls(status_code, message or f"HTTP {status_code}", body=body, **kwargs)
