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

T = TypeVar("T")


class CallerThreads:
    def __init__(self, threads: int, per_caller: int, name: str) -> None:
        self.threads = threads
        self.per_caller = per_caller
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        #: Callers with work running or waiting.
        self._callers: dict[str, _Share] = {}

    async def run(self, caller: str, work: Callable[[], T]) -> T:
        """``work`` in a thread, once ``caller`` (if named) has one of its places."""
        loop = asyncio.get_running_loop()
        if not caller:
            return await loop.run_in_executor(self._executor(), work)
        share = self._callers.get(caller)
        if share is None:
            share = self._callers[caller] = _Share(self.per_caller)
        share.users += 1
        try:
            await share.places.acquire()
        except BaseException:
            self._leave(caller, share)
            raise

        def ended(_: Future[T]) -> None:  # in the thread, or where it was cancelled
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                loop.call_soon_threadsafe(self._release, caller, share)

        running = self._executor().submit(work)
        running.add_done_callback(ended)
        return await asyncio.wrap_future(running)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=self._name)
        return self._pool

    def _release(self, caller: str, share: _Share) -> None:
        share.places.release()
        self._leave(caller, share)

    def _leave(self, caller: str, share: _Share) -> None:
        share.users -= 1
        if not share.users:
            del self._callers[caller]

    def close(self) -> None:
        """Once nothing more is submitted; work still running ends on its own."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class _Share:
    """One caller's places among the threads, and its work running or waiting for one
    (the share is dropped when none is left)."""

    __slots__ = ("places", "users")

    def __init__(self, places: int) -> None:
        self.places = asyncio.Semaphore(places)
        self.users = 0
