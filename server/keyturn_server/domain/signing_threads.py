"""RSA signatures in threads, a bounded share of them per caller.

An RSA private-key operation costs milliseconds (PSS with SHA-256 here: 0.8 ms at 2048
bits, 2.2 at 3072, 5.7 at 4096), against about 0.3 ms of server time for a whole
validation. Signing on the event loop stalled every caller for each signature: one
service sending 64 Sign calls at once with a 4,096-bit key (137 a second, far under its
rate) pushed another caller's ValidateHandle p90 from 9 to 526 ms. ``cryptography``
releases the GIL while it signs, so a thread frees the loop and uses another core; one
caller's signatures hold at most half the threads at once and queue behind each other,
so its flood waits for its own. Elliptic-curve signatures and MACs cost microseconds
and stay on the loop, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
#: Algorithms whose signatures are made in a thread.
THREADED = frozenset({"rsa"})


def default_threads() -> int:
    """As many threads as cores, at least two: the work is CPU with the GIL released."""
    return max(2, os.cpu_count() or 2)


class SigningThreads:
    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or default_threads()
        #: Threads one caller may hold at once: half of them, so others always have some.
        self.per_caller = max(1, self.threads // 2)
        self._pool: ThreadPoolExecutor | None = None
        #: Callers with signatures running or waiting.
        self._callers: dict[str, _Share] = {}

    async def run(self, caller: str, work: Callable[[], T]) -> T:
        """``work`` in a thread, once ``caller`` has one of its places. A place is given
        back when the work ends in its thread, not when its call is cancelled."""
        loop = asyncio.get_running_loop()
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
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="keyturn-sign")
        return self._pool

    def _release(self, caller: str, share: _Share) -> None:
        share.places.release()
        self._leave(caller, share)

    def _leave(self, caller: str, share: _Share) -> None:
        share.users -= 1
        if not share.users:
            del self._callers[caller]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class _Share:
    """One caller's places among the threads, and its signatures running or waiting."""

    __slots__ = ("places", "users")

    def __init__(self, places: int) -> None:
        self.places = asyncio.Semaphore(places)
        self.users = 0
