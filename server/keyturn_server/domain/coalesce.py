"""Calls that wait for the store together, run together as one unit of work.

Group commit already shares one fsync among the writes that wait for it; this goes one
step further for the hottest write, the validation. Calls queue here, and one unit of
work at a time waits in the store on their behalf; when it runs, it takes every call
that has arrived by then (those that came while the previous commit was in flight).
N validations then cost one savepoint, one SELECT and one UPDATE per handle instead of
N of each. Items run in arrival order, each seeing the effects of those before it: the
result is that of N units one after another.

Under load the unit is held back a little while calls keep arriving (:mod:`batching`),
so that one unit and one commit serve many of them; with one call in flight it goes to
the store at once.

A unit takes at most ``unit_limit`` calls (:data:`batching.UNIT_LIMIT`): a backlog built
up during a stall is worked off in units of that size, the next one queued as soon as one
is taken, and the loop serves other calls between them. Past ``max_pending`` waiting
calls a new one is refused at once (STORE_BEHIND).

If the shared unit fails with a bug hit by one item, every item is run again in a unit of
its own, so that one bad item cannot fail the others. A store that cannot write at all
(UNAVAILABLE, RESOURCE_EXHAUSTED: a full disk, a lost file) fails every item at once:
trying each alone would only fail each one's commit in turn.

Results that promise nothing durable (``early``: a refusal) are answered as soon as
they are decided, inside the unit, instead of after the commit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from keyturn_server.domain.batching import MAX_PENDING, UNIT_LIMIT, BatchWindow, behind
from keyturn_server.domain.errors import ResourceExhausted, Unavailable
from keyturn_server.domain.repositories import Repository, Store

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    def __init__(
        self,
        store: Store,
        run: Callable[[Repository, Sequence[Item]], list[Result]],
        early: Callable[[Item, Result], bool] | None = None,
    ) -> None:
        self._store = store
        self._run = run
        self._early = early
        # The store may run the unit in a worker thread (PostgreSQL) while calls arrive
        # on the loop: taking the queue and adding to it must not interleave.
        self._lock = threading.Lock()
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        #: A unit of ours is waiting in the store: later calls join it.
        self._queued = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.window = BatchWindow()
        self.unit_limit = UNIT_LIMIT
        self.max_pending = MAX_PENDING

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """Queue ``item``; its result, to await. A future rather than a coroutine: the
        call that awaits it resumes through one frame less (it is the hottest wait)."""
        if len(self._pending) >= self.max_pending:
            raise behind(self.max_pending)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.window.arrived()
        with self._lock:
            self._pending.append((item, future))
            start, self._queued = not self._queued, True
        if start:
            self._start()
        return future

    def _start(self) -> None:
        task = asyncio.ensure_future(self._write())
        self._tasks.add(task)  # the loop keeps only a weak reference to tasks
        task.add_done_callback(self._tasks.discard)

    def _take(self) -> tuple[list[tuple[Item, asyncio.Future[Result]]], bool]:
        """The calls waiting now, at most ``unit_limit``, and whether more are left. The
        next call queues a new unit; calls left over are the caller's to queue one for
        (it runs on the loop or, on PostgreSQL, in a worker thread)."""
        with self._lock:
            taken, self._pending = (
                self._pending[: self.unit_limit],
                self._pending[self.unit_limit :],
            )
            self._queued = more = bool(self._pending)
        return taken, more

    def _drain(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        """Every call waiting (the unit was cancelled: the server stops)."""
        with self._lock:
            taken, self._pending, self._queued = self._pending, [], False
        return taken

    async def _write(self) -> None:
        taken: list[tuple[Item, asyncio.Future[Result]]] = []
        loop = asyncio.get_running_loop()
        early = self._early

        def work(repo: Repository) -> list[Result]:
            nonlocal taken
            taken, more = self._take()
            if more:  # more than one unit's worth waits: the next unit now
                loop.call_soon_threadsafe(self._start)
            results = self._run(repo, [item for item, _ in taken])
            if early is not None:
                for (item, future), result in zip(taken, results, strict=True):
                    if early(item, result):
                        # The unit may run in a worker thread (PostgreSQL).
                        loop.call_soon_threadsafe(_settle, future, result)
            return results

        try:
            await self.window.hold(len(self._pending))
            results = await self._store.write(work)
        except asyncio.CancelledError:
            for _, future in taken or self._drain():
                future.cancel()
            raise
        except Exception as exc:
            if not taken:  # refused before it ran (the store is closing): nobody served
                taken, more = self._take()
                if more:
                    self._start()
            elif not isinstance(exc, Unavailable | ResourceExhausted):
                for item, future in taken:  # one after another: arrival order still holds
                    await self._alone(item, future)
                return
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
            return
        self.window.closed(len(taken))
        for (_, future), result in zip(taken, results, strict=True):
            if not future.done():  # a caller that went away: its item still counted
                future.set_result(result)

    async def _alone(self, item: Item, future: asyncio.Future[Result]) -> None:
        try:
            result = await self._store.write(lambda repo: self._run(repo, [item])[0])
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)


def _settle(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)
