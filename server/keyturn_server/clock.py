"""The one source of "now".

Every expiry check and the scheduler read time from a :class:`Clock`, so tests move a
:class:`ManualClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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


#: The largest forward step of the system clock followed at once (seconds): ntpd's
#: panic threshold, past which it refuses to step the clock and waits for an operator.
MAX_STEP = 1000.0


def _steady_clock() -> Callable[[], float]:
    """A clock nothing steps that, unlike CLOCK_MONOTONIC, also counts a suspend
    (CLOCK_BOOTTIME): the wall clock moves with it through a suspend, so a suspend is not
    a step. Elsewhere than Linux, the monotonic clock: a suspend there looks like a step
    forward."""
    boottime: int | None = getattr(time, "CLOCK_BOOTTIME", None)
    return time.monotonic if boottime is None else functools.partial(time.clock_gettime, boottime)


_boottime = _steady_clock()


class SystemClock:
    """Wall-clock time that never runs backward, and does not leap far ahead.

    Expiry, rate windows, rotation and the audit log's times compare the wall clock with
    stored times. Stepped back (NTP correcting a bad source, an operator's ``date -s``, a
    virtual machine resumed from a snapshot), every live handle and key version had that
    much more to live, and the scheduler's deadlines moved later by as much. So once the
    wall clock is more than ``STEP`` behind the time this clock has given, the time runs
    on from there at the pace of the steady clock (CLOCK_BOOTTIME, which nothing steps
    and which counts a suspend), until the wall clock catches up. Smaller steps back are
    held (the time stands until the wall clock passes it). Both are logged.

    A step forward up to ``max_step`` is followed: it cannot be told from the correction
    of a clock that was behind, and it only ends things early. A larger one is not: the
    scheduler would expire every key version it passed and destroy its material, and
    expire every handle, at once and for good, on the word of a clock that jumped (a
    wrong NTP source, a bad hardware clock, an operator's typo), and the store's time
    floor would keep the server there after the clock is put right. The time then runs on
    at the steady pace, the step is logged as an error, and the wall clock is followed
    again when it comes back in line, or when an operator says it is right
    (:meth:`follow_system_clock`: SIGHUP) or restarts the server.

    ``not_before`` sets a floor at start: the latest time the store has recorded
    (:mod:`keyturn_server.domain.time_floor`), so a server started on a host whose clock
    came back behind starts from there.
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = _boottime,
        max_step: float | None = MAX_STEP,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        #: The largest forward step followed (None: any).
        self.max_step = max_step
        #: The last reading that followed the wall clock: its wall and steady times.
        self._anchor = wall()
        self._anchored = monotonic()
        self._last = self._anchor
        self._behind = False
        #: The wall clock jumped further ahead than max_step and is not followed.
        self.ahead = False

    def now(self) -> datetime:
        # On the path of every call: the usual case is a few float operations.
        wall = self._wall()
        monotonic = self._monotonic()
        drift = wall - (self._anchor + (monotonic - self._anchored))
        if -STEP <= drift <= STEP and not self._behind and not self.ahead:
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
        was out of line at the last reading."""
        steady = self._anchor + (monotonic - self._anchored)
        if drift < -STEP:  # behind: run on from the anchor at the steady pace
            if not self._behind:
                self._behind = True
                self.ahead = False
                _said_behind(-drift, steady)
            current = steady
        elif self.max_step is not None and drift > self.max_step:  # far ahead: held
            if not self.ahead:
                self.ahead = True
                _said_ahead(drift, self.max_step, steady)
            current = steady
        else:
            if self._behind:
                self._behind = False
                log.warning(
                    "the system clock caught up with Keyturn's time; following it again",
                    extra={"category": "error"},
                )
            elif self.ahead:
                self.ahead = False
                log.warning(
                    "the system clock came back within %.0f s of Keyturn's time; following "
                    "it again",
                    self.max_step,
                    extra={"category": "error", "seconds": round(drift, 3)},
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

    def follow_system_clock(self) -> float:
        """An operator says the system clock is right: follow its step forward now (what
        it passed is due at once). The seconds it moved the time ahead (0: it was not
        ahead). A clock behind is not followed back: times never run backward."""
        if not self.ahead:
            return 0.0
        before = self.now().timestamp()
        self.ahead = False
        self._anchor = self._wall()
        self._anchored = self._monotonic()
        return self.now().timestamp() - before

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
        "at the pace of the steady clock until the system clock catches up, so nothing "
        "lives longer for the step back",
        seconds,
        datetime.fromtimestamp(steady, UTC).isoformat(),
        extra={"category": "error", "seconds": round(seconds, 3)},
    )


def _said_ahead(seconds: float, limit: float, steady: float) -> None:
    log.error(
        "the system clock jumped forward by %.1f s, more than the %.0f s Keyturn follows "
        "(--max-clock-step); Keyturn's time runs on from %s at the pace of the steady clock, "
        "so that no key version is destroyed and no handle expired on the word of a clock "
        "that may be wrong. If the system clock is right (the host was paused), send "
        "SIGHUP or restart the server to follow it",
        seconds,
        limit,
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
