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

If the shared unit fails (a store error, or a bug hit by one item), every item is run
again in a unit of its own, so that one bad item cannot fail the others.

Results that promise nothing durable (``early``: a refusal) are answered as soon as
they are decided, inside the unit, instead of after the commit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from keyturn_server.domain.batching import BatchWindow
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

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """Queue ``item``; its result, to await. A future rather than a coroutine: the
        call that awaits it resumes through one frame less (it is the hottest wait)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.window.arrived()
        with self._lock:
            self._pending.append((item, future))
            start, self._queued = not self._queued, True
        if start:
            task = asyncio.ensure_future(self._write())
            self._tasks.add(task)  # the loop keeps only a weak reference to tasks
            task.add_done_callback(self._tasks.discard)
        return future

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        """Every call waiting now; the next call queues a new unit."""
        with self._lock:
            taken, self._pending, self._queued = self._pending, [], False
        return taken

    async def _write(self) -> None:
        taken: list[tuple[Item, asyncio.Future[Result]]] = []
        loop = asyncio.get_running_loop()
        early = self._early

        def work(repo: Repository) -> list[Result]:
            nonlocal taken
            taken = self._take()
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
            for _, future in taken or self._take():
                future.cancel()
            raise
        except Exception as exc:
            if not taken:  # refused before it ran (the store is closing): nobody served
                for _, future in self._take():
                    if not future.done():
                        future.set_exception(exc)
                return
            for item, future in taken:  # one after another: arrival order still holds
                await self._alone(item, future)
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
