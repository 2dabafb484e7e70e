"""The one source of "now".

Every expiry check and the scheduler read time from a :class:`Clock`, so tests move a
:class:`ManualClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

log = logging.getLogger("keyturn.clock")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""

    async def sleep_until(self, deadline: datetime, wake: asyncio.Event) -> None:
        """Return once ``deadline`` is reached or ``wake`` is set, whichever comes first."""

    def not_before(self, floor: datetime) -> None:
        """Never give a time before ``floor``: the latest time the store has recorded."""


#: The longest a sleep waits on one timer before it reads the clock again (seconds).
SLICE = 1.0
#: How far the system clock may fall behind the server's time before it counts as
#: stepped back (logged), or jump ahead of it before it counts as stepped forward. Below
#: it, a slewed clock's wobble is absorbed without a word.
STEP = 1.0


class SystemClock:
    """Wall-clock time that never runs backward.

    Expiry, rate windows, rotation and the audit log's times compare the wall clock with
    stored times. Stepped back (NTP correcting a bad source, an operator's ``date -s``, a
    virtual machine resumed from a snapshot), every live handle and key version had that
    much more to live, and the scheduler's deadlines moved later by as much. So once the
    wall clock is more than ``STEP`` behind the time this clock has given, the time runs
    on from there at the pace of the monotonic clock, which nothing steps, until the wall
    clock catches up. Smaller steps back are held (the time stands until the wall clock
    passes it). A step forward is followed: it cannot be told from the correction of a
    clock that was behind, and it only ends things early. Both are logged.

    ``not_before`` sets a floor at start: the latest time the store has recorded
    (:mod:`keyturn_server.domain.time_floor`), so a server started on a host whose clock
    came back behind starts from there.
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        #: The last reading that followed the wall clock: its wall and monotonic times.
        self._anchor = wall()
        self._anchored = monotonic()
        self._last = self._anchor
        self._behind = False

    def now(self) -> datetime:
        # On the path of every call: the usual case is a few float operations.
        wall = self._wall()
        monotonic = self._monotonic()
        drift = wall - (self._anchor + (monotonic - self._anchored))
        if -STEP <= drift <= STEP and not self._behind:
            self._anchor = wall
            self._anchored = monotonic
            if wall < self._last:
                wall = self._last  # a small step back is held, not followed
            else:
                self._last = wall
            return datetime.fromtimestamp(wall, UTC)
        return datetime.fromtimestamp(self._stepped(wall, monotonic, drift), UTC)

    def _stepped(self, wall: float, monotonic: float, drift: float) -> float:
        """The time when the wall clock is more than STEP from where it should be, or
        was behind at the last reading."""
        if drift < -STEP:  # behind: run on from the anchor at the monotonic pace
            if not self._behind:
                self._behind = True
                _said_behind(-drift, wall - drift)
            current = wall - drift
        else:
            if self._behind:
                self._behind = False
                log.warning(
                    "the system clock caught up with Keyturn's time; following it again",
                    extra={"category": "error"},
                )
            elif drift > STEP:
                log.warning(
                    "the system clock jumped forward by %.1f s; expiries and rotations it "
                    "passed are due now",
                    drift,
                    extra={"category": "error", "seconds": round(drift, 3)},
                )
            self._anchor = wall
            self._anchored = monotonic
            current = wall
        current = max(current, self._last)
        self._last = current
        return current

    def not_before(self, floor: datetime) -> None:
        """Never give a time before ``floor`` (the latest the store has recorded)."""
        self.now()  # the readings so far
        at = floor.timestamp()
        if at > self._last:
            self._anchor = self._last = at
            self._anchored = self._monotonic()

    async def sleep_until(self, deadline: datetime, wake: asyncio.Event) -> None:
        # In slices: the loop's timers follow the monotonic clock, which stands still
        # while the host is suspended or its VM paused, and which no correction of the
        # wall clock moves. One long timer would keep what such a step made due waiting
        # for as long as the deadline had been away; a slice notices within a second.
        while not wake.is_set():
            delay = (deadline - self.now()).total_seconds()
            if delay <= 0:
                return
            # Not asyncio.wait_for: on Python 3.11 a task cancelled in the loop iteration
            # in which ``wake`` is set got the result instead of its CancelledError, and
            # the scheduler slept on through App.stop (tests/test_stop.py). A timeout
            # scope turns only its own expiry into TimeoutError.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, SLICE)):
                    await wake.wait()


def _said_behind(seconds: float, steady: float) -> None:
    log.error(
        "the system clock is %.1f s behind Keyturn's time; Keyturn's time runs on from %s "
        "at the pace of the monotonic clock until the system clock catches up, so nothing "
        "lives longer for the step back",
        seconds,
        datetime.fromtimestamp(steady, UTC).isoformat(),
        extra={"category": "error", "seconds": round(seconds, 3)},
    )


class ManualClock:
    """A clock that only moves when told to; sleepers wake when it passes their deadline."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._moved = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("a clock does not go backwards")
        self._now += delta
        self._moved.set()
        self._moved = asyncio.Event()
        return self._now

    def set(self, when: datetime) -> None:
        self.advance(when - self._now)

    def not_before(self, floor: datetime) -> None:
        if floor > self._now:
            self.set(floor)

    async def sleep_until(self, deadline: datetime, wake: asyncio.Event) -> None:
        while self._now < deadline and not wake.is_set():
            moved = asyncio.ensure_future(self._moved.wait())
            woken = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({moved, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                moved.cancel()
                woken.cancel()


def to_micros(when: datetime) -> int:
    """Timestamps are stored as integer microseconds since the epoch (indexable, exact)."""
    delta = when - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def optional_micros(when: datetime | None) -> int | None:
    return None if when is None else to_micros(when)


def optional_datetime(micros: int | None) -> datetime | None:
    return None if micros is None else from_micros(micros)
