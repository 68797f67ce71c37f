"""When and how long to wait before retrying a request.

Retries happen only where a second try can help and cannot do harm: connection failures and the
gateway's 502/503/504 (engine down, store briefly unavailable, engine timeout). A 4xx is the
caller's mistake and is never retried.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; `Retry-After` from the server wins when it is longer."""

    max_retries: int = 3
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry number `attempt + 1`."""
        base = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        wait = base * (0.5 + random.random() / 2)
        if response is not None:
            retry_after = response.headers.get("retry-after")
            if retry_after and retry_after.replace(".", "", 1).isdigit():
                wait = max(wait, min(float(retry_after), self.max_backoff_s))
        return wait

    def should_retry_status(self, status_code: int, attempt: int) -> bool:
        return status_code in RETRY_STATUSES and attempt < self.max_retries

    def should_retry_error(self, error: Exception, attempt: int) -> bool:
        """Connection-level failures only: the request did not reach the gateway."""
        retryable = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        return retryable and attempt < self.max_retries
