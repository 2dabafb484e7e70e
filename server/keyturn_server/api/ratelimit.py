"""Per-caller rate limiting (token buckets), so that one client cannot starve others."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from keyturn_server.clock import Clock
from keyturn_server.domain.errors import ResourceExhausted


@dataclass
class _Bucket:
    tokens: float
    updated: datetime


class CallerLimiter:
    def __init__(self, clock: Clock, per_second: float, burst: int) -> None:
        self._clock = clock
        self.per_second = per_second
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def take(self, caller: str) -> None:
        if not self.enabled:
            return
        now = self._clock.now()
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = _Bucket(float(self.burst), now)
        elapsed = max(0.0, (now - bucket.updated).total_seconds())
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.per_second)
        bucket.updated = now
        if bucket.tokens < 1.0:
            wait = timedelta(seconds=(1.0 - bucket.tokens) / self.per_second)
            raise ResourceExhausted(
                f"caller {caller!r} exceeded {self.per_second:g} requests per second",
                reason="CALLER_RATE_LIMITED",
                retry_after=wait,
            )
        bucket.tokens -= 1.0
