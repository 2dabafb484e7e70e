"""Each caller's share of the store's writer: at most ``per_caller`` of its writes wait
for the store or commit at once; the rest wait for one of its own places.

Every durable write goes through one writer (SQLite's single write lock and its group
commit; PostgreSQL's commit threads), which takes work in the order it arrives. One
service within its call rate and its calls in progress (1,000/s, 1,000 at once) sends
more writes than the store commits (here ~400 a second of handles with full contexts,
with ``--workers 2``): its backlog filled the queue, and every other caller's write
waited behind all of it. With 600 GenerateHandle/RemoveHandle calls of one token in
flight, another service's GenerateHandle and RemoveHandle (measured from a process of
its own) took 5.9 s at the median and 6.9 s at the 90th percentile; held to a share of
16, 139 ms and 352 ms. Measured from the flooding client's own process, where its event
loop adds its own queue: 1.1-2.0 s at the median before, 100-150 ms with a share of 16
(32: 700 ms; 8: 66 ms); a lone caller's throughput of small writes (128 in flight)
stayed within the run-to-run noise of the same measurement without a share (465-560 vs
470-670 a second).

A place is given back when the write is done (committed or refused), not when its caller
stops waiting: a caller that cancels its calls (short deadlines) still holds the places
its queued writes take. The scheduler and other internal writes are not named and wait
for no place; validations are coalesced into units of many callers' (domain/coalesce.py)
and name none. Like the call rate, a share is counted per serving process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from keyturn_server.domain.caller_places import CallerPlaces

T = TypeVar("T")

#: Writes one caller may have waiting for the store or committing at once (per process):
#: measured above, against the latency of everyone else's writes.
CALLER_WRITES = 16


class WriteShares:
    def __init__(self, per_caller: int = CALLER_WRITES) -> None:
        #: 0: no share (every write joins the store's queue at once).
        self.per_caller = per_caller
        self._places = CallerPlaces(per_caller)

    def waiting(self, caller: str) -> int:
        """Writes of ``caller`` that hold a place or wait for one (0 when none)."""
        return self._places.waiting(caller)

    async def run(self, caller: str, write: Coroutine[Any, Any, T]) -> T:
        """``write`` once ``caller`` (if named) holds one of its places, kept until
        ``write`` ends even when the caller stops waiting for it."""
        if not caller or self.per_caller <= 0:
            return await write
        try:
            await self._places.take(caller)
        except BaseException:
            write.close()  # never started: nothing of it was done
            raise
        running = asyncio.ensure_future(write)

        def done(task: asyncio.Future[T]) -> None:
            if not task.cancelled():
                task.exception()  # retrieved: a caller that left does not leave it unread
            self._places.give_back(caller)

        running.add_done_callback(done)
        # A cancelled caller cancels only its wait, as the store's own queue does: the
        # write goes on (and commits with its batch), holding its place until then.
        return await asyncio.shield(running)
