"""A per-key token bucket, kept in process memory.

Rate limiting is per process on purpose: it must cost nothing in Redis (a
rejected request changes nothing there) and a client sticks to one process
for a while. Buckets idle long enough to be full are forgotten.
"""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, *, rate_per_s: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def __repr__(self) -> str:
        return f"RateLimiter(rate_per_s={self.rate}, burst={self.burst:g})"

    def allow(self, key: str, *, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_keys:
            self._forget_full(now)
        return True

    def _forget_full(self, now: float) -> None:
        refill_s = self.burst / self.rate
        self._buckets = {
            k: v for k, v in self._buckets.items() if now - v[1] < refill_s
        }
