"""Per-caller limits, so that one client cannot starve others: a rate (token buckets) and
a cap on calls in progress.

The rate bounds what a caller starts; the cap bounds what it has waiting. They differ on
a bad day: while the store stalls (a hung fsync, a write lock held by another process)
nothing finishes, and a caller within its rate, or one with no rate limit, goes on
adding calls to the one backlog every caller shares, until that backlog is full
(``MAX_PENDING``, STORE_BEHIND) and everyone is refused. Capped, its flood is refused
at its own share and other callers' calls still wait their turn."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from keyturn_server.clock import Clock
from keyturn_server.domain.errors import ResourceExhausted


@dataclass
class _Bucket:
    tokens: float
    updated: datetime


#: How long a caller refused for having too many calls in progress is asked to wait.
IN_FLIGHT_RETRY = timedelta(seconds=1)


class CallerLimiter:
    def __init__(self, clock: Clock, per_second: float, burst: int, max_in_flight: int = 0) -> None:
        self._clock = clock
        self.per_second = per_second
        self.burst = burst
        self.max_in_flight = max_in_flight
        self._buckets: dict[str, _Bucket] = {}
        #: Calls in progress by caller; a caller with none has no entry.
        self._in_flight: dict[str, int] = {}

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

    def enter(self, caller: str) -> None:
        """Count a call of ``caller`` in progress, or refuse it past the cap (0: none).
        Every successful enter is matched by one :meth:`leave`."""
        count = self._in_flight.get(caller, 0)
        if self.max_in_flight and count >= self.max_in_flight:
            raise ResourceExhausted(
                f"caller {caller!r} has {count} calls in progress, as many as it may: wait "
                "for some of them to be answered",
                reason="CALLER_IN_FLIGHT",
                retry_after=IN_FLIGHT_RETRY,
                metadata={"limit": str(self.max_in_flight)},
            )
        self._in_flight[caller] = count + 1

    def leave(self, caller: str) -> None:
        count = self._in_flight[caller] - 1
        if count:
            self._in_flight[caller] = count
        else:
            del self._in_flight[caller]
