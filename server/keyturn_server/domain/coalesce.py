"""Calls that wait for the store together, run together as one unit of work.

Group commit already shares one fsync among the writes that wait for it; this goes one
step further for the hottest write, the validation. Calls queue here, and one unit of
work at a time waits in the store on their behalf; when it runs, it takes every call
that has arrived by then (those that came while the previous commit was in flight).
N validations then cost one savepoint, one SELECT and one UPDATE per handle instead of
N of each. Items run in arrival order, each seeing the effects of those before it: the
result is that of N units one after another.

If the shared unit fails (a store error, or a bug hit by one item), every item is run
again in a unit of its own, so that one bad item cannot fail the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from keyturn_server.store.base import Store
from keyturn_server.store.sql import SqlRepository

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Units of work stay short: a burst larger than this is split.
MAX_ITEMS = 256


class Coalescer(Generic[Item, Result]):
    def __init__(
        self,
        store: Store,
        run: Callable[[SqlRepository, Sequence[Item]], list[Result]],
    ) -> None:
        self._store = store
        self._run = run
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        #: A unit of ours is waiting in the store: later calls join it.
        self._queued = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._queued:
            self._queue()
        return await future

    def _queue(self) -> None:
        self._queued = True
        task = asyncio.ensure_future(self._write())
        self._tasks.add(task)  # the loop keeps only a weak reference to tasks
        task.add_done_callback(self._tasks.discard)

    async def _write(self) -> None:
        taken: list[tuple[Item, asyncio.Future[Result]]] = []

        def work(repo: SqlRepository) -> list[Result]:
            nonlocal taken
            taken, self._pending = self._pending[:MAX_ITEMS], self._pending[MAX_ITEMS:]
            self._queued = False
            if self._pending:
                self._queue()
            return self._run(repo, [item for item, _ in taken])

        try:
            results = await self._store.write(work)
        except asyncio.CancelledError:
            if not taken:
                taken, self._pending, self._queued = self._pending, [], False
            for _, future in taken:
                future.cancel()
            raise
        except Exception as exc:
            if not taken:  # refused before it ran (the store is closing): nobody served
                taken, self._pending, self._queued = self._pending, [], False
                for _, future in taken:
                    if not future.done():
                        future.set_exception(exc)
                return
            await asyncio.gather(*(self._alone(item, future) for item, future in taken))
            return
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
