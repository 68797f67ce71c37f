"""Per-key token buckets: how fast one API key may post feedback (docs/security.md).

Feedback moves calibration (the refit learns from it), so a leaked or misbehaving client key must
not be able to flood the store with labels. Each client key has a bucket of `burst` tokens that
refills at `rate_per_s`; a feedback request costs one token per item. An empty bucket answers 429
with `Retry-After` (the seconds until enough tokens are back).

The buckets live in the process: with several workers or replicas the effective limit is the
per-process limit times their number (documented; a shared limiter would put the database on the
feedback hot path for little gain — the audit trail is the real defence).
"""

from __future__ import annotations

import math
import threading
import time

__all__ = ["TokenBuckets"]

_MAX_BUCKETS = 100_000


class TokenBuckets:
    """One token bucket per key; `take(key, cost)` → 0.0 if granted, else seconds to wait."""

    def __init__(self, rate_per_s: float, burst: int, *, clock=time.monotonic) -> None:
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, key: str, cost: float = 1.0) -> float:
        """Spend `cost` tokens of `key`'s bucket. Returns 0.0 when granted (tokens spent), or
        the seconds until the bucket holds `cost` tokens (nothing spent)."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
            if tokens >= cost:
                if len(self._buckets) >= _MAX_BUCKETS and key not in self._buckets:
                    self._buckets.clear()  # bounded memory; a reset only forgives
                self._buckets[key] = (tokens - cost, now)
                return 0.0
            self._buckets[key] = (tokens, now)
        if self.rate_per_s <= 0:
            return math.inf
        return (cost - tokens) / self.rate_per_s
