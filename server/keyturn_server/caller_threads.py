"""A pool of threads shared by callers, each holding at most a share of it at once.

Work that blocks a thread (a store's reports, RSA signatures) must not let one caller take
every thread: its flood would hold everyone else's calls behind it. Each named caller
waits for one of its own ``per_caller`` places before its work is submitted, so a flood
waits for its own. A place is given back when the work ends in its thread, not when its
call is cancelled: a caller that gives up on its calls (short deadlines) still holds the
threads its work keeps busy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from keyturn_server.domain.caller_places import CallerPlaces

T = TypeVar("T")


class CallerThreads:
    def __init__(self, threads: int, per_caller: int, name: str) -> None:
        self.threads = threads
        self.per_caller = per_caller
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._places = CallerPlaces(per_caller)

    async def run(self, caller: str, work: Callable[[], T]) -> T:
        """``work`` in a thread, once ``caller`` (if named) has one of its places."""
        loop = asyncio.get_running_loop()
        if not caller:
            return await loop.run_in_executor(self._executor(), work)
        await self._places.take(caller)

        def ended(_: Future[T]) -> None:  # in the thread, or where it was cancelled
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                loop.call_soon_threadsafe(self._places.give_back, caller)

        running = self._executor().submit(work)
        running.add_done_callback(ended)
        return await asyncio.wrap_future(running)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self._name)
        return self._pool

    def close(self) -> None:
        """Once nothing more is submitted; work still running ends on its own."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
