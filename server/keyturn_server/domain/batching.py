"""How long a batch waits for more work before it commits: long under load, not at all
when idle.

Group commit shares one commit (two thread hops, a savepoint, an fsync: ~600 µs of CPU
here) among the writes that wait for it, so its cost per write falls with the batch
size. Under load a batch fills with whatever arrives while the previous commit is in
flight, which on this server was only 4-7 validations: grpc hands the loop one call at a
time, so few calls arrive during one fsync. Holding the batch open longer makes it bigger,
but a fixed window ruins latency at low load (p50 at one call in flight went from 1.5 ms
to 12 ms with an 8 ms window).

So the hold follows the arrivals. A batch stays open while work keeps coming: each wait
lasts about two recent gaps between arrivals (0.1 to 1 ms), and the batch closes as soon
as one such wait brings nothing, or when it has been open for ``cap`` or holds ``limit``
items. Arrivals are only counted (the rate comes from the count and the clock when a
batch closes or a hold waits): counting is on the path of every call. Holding
costs nothing while the loop is busy taking new calls (that is where the time goes
anyway), and closing on the first quiet wait ends it once the loop would otherwise idle.

A caller that waits for its own answer before it sends again (one call in flight) never
brings anything during a hold, so holds that brought nothing switch holding off; every
``PROBE``-th batch holds once more to notice load coming back. With one call in flight a
batch therefore commits at once, as without any hold.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta

from keyturn_server.domain.errors import ResourceExhausted

#: Longest a batch is held open for more work.
CAP = 0.008
#: Most items a hold waits for. A batch that waited for every caller in flight would
#: leave the loop idle while it commits (nobody else is left to serve); closed at this
#: size, the next batch gathers while this one commits. With 128 HTTP callers in flight
#: one batch used to take all 128, and the loop stood still for each commit: closing at
#: 64 served 9-11% more (bench.http_ab), and changed nothing for gRPC, whose batches
#: stay under it. 32 did no better than 64 and pays each commit's cost over fewer items.
LIMIT = 64
#: Most items one unit of work or one transaction takes. Units and transactions run on the
#: event loop: after a stall (a slow fsync, another process holding the write lock) the
#: backlog used to run as one, every waiting validation in a row, while the loop served
#: nothing else, health checks included. In pieces this size (about 15 ms of validations)
#: the loop serves other calls between them.
UNIT_LIMIT = 256
#: Items that may wait at one batching point. Past it a write is refused at once
#: (RESOURCE_EXHAUSTED, STORE_BEHIND, retry in a second) instead of queueing without bound
#: while the store cannot keep up: memory stays bounded and callers hear it at once.
MAX_PENDING = 10_000
BEHIND_RETRY = timedelta(seconds=1)
#: Waits shorter than this are not worth a timer; longer ones mean the load is light.
MIN_QUIET = 0.0001
MAX_QUIET = 0.001
#: Holds in a row that brought nothing before holding stops; then every PROBE-th batch
#: holds once to see whether load came back.
FRUITLESS = 2
PROBE = 16


@dataclass
class BatchFigures:
    """Counts since start, for health and benchmarks."""

    batches: int = 0
    items: int = 0
    holds: int = 0
    held_seconds: float = 0.0


class BatchWindow:
    """Arrival bookkeeping and the hold policy of one batching point (the store's group
    commit, the validation coalescer). Runs on the event loop only."""

    def __init__(self, cap: float = CAP, limit: int = LIMIT) -> None:
        self.cap = cap
        self.limit = limit
        self.figures = BatchFigures()
        self._arrivals = 0
        #: (time, arrivals) when the last batch closed: the recent arrival rate.
        self._mark = (time.perf_counter(), 0)
        self._fruitless = 0
        self._skipped = 0

    def arrived(self) -> None:
        """One item of work arrived (call on every submission: kept to a counter)."""
        self._arrivals += 1

    def closed(self, items: int) -> None:
        """A batch of ``items`` was taken."""
        self.figures.batches += 1
        self.figures.items += items
        self._mark = (time.perf_counter(), self._arrivals)

    def _quiet(self, since: float, arrivals: int, now: float) -> float:
        """How long a wait without arrivals means the load has paused: about two gaps
        between arrivals, as seen since ``since`` (when ``arrivals`` had arrived)."""
        count = self._arrivals - arrivals
        if count < 2:
            return MAX_QUIET  # too few to tell a rate: the longest wait
        return min(max(2 * (now - since) / count, MIN_QUIET), MAX_QUIET)

    def _worth_holding(self) -> bool:
        if self._fruitless < FRUITLESS:
            return True
        self._skipped += 1
        if self._skipped >= PROBE:
            self._skipped = 0
            return True
        return False

    async def hold(self, pending: int) -> None:
        """Return when the batch of ``pending`` items (and whatever arrives meanwhile)
        should close."""
        if pending >= self.limit or not self._worth_holding():
            return
        started = time.perf_counter()
        deadline = started + self.cap
        first = self._arrivals
        since, counted = self._mark
        while True:
            seen = self._arrivals
            now = time.perf_counter()
            wait = min(self._quiet(since, counted, now), deadline - now)
            if wait <= 0:
                break
            await asyncio.sleep(wait)
            if self._arrivals == seen or pending + self._arrivals - first >= self.limit:
                break
            since, counted = started, first  # the rate while held, from now on
        gained = self._arrivals - first
        self._fruitless = 0 if gained else self._fruitless + 1
        self.figures.holds += 1
        self.figures.held_seconds += time.perf_counter() - started


def behind(limit: int) -> ResourceExhausted:
    """The refusal of a write that finds ``limit`` items queued already."""
    return ResourceExhausted(
        f"the store is behind: {limit} writes are waiting for it (a slow disk, or another "
        "process holding its write lock); nothing of this request was done: retry shortly",
        reason="STORE_BEHIND",
        retry_after=BEHIND_RETRY,
        metadata={"limit": str(limit)},
    )
