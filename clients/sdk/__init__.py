"""Typed Python SDK for the mllm-calib gateway (sync and async, over httpx).

The gateway also works unchanged with the official OpenAI SDK; this SDK adds typed access to the
`calibration` object, feedback, profiles, refits and reliability data, with retries on 502/503/504.
"""

from .client import AsyncCalibClient, CalibClient
from .errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    CalibError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UpstreamError,
)
from .results import Calibration, Completion, StreamResult
from .retry import RetryPolicy

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "AsyncCalibClient",
    "AuthenticationError",
    "BadRequestError",
    "CalibClient",
    "CalibError",
    "Calibration",
    "Completion",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "StreamResult",
    "UnprocessableEntityError",
    "UpstreamError",
]
