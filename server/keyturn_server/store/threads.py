"""The threads a store blocks in, kept apart by what waits on them.

Reports (listings, statistics, the audit log's pages and its verification) and commits
(SQLite's COMMIT and its wait for another process's write lock; every PostgreSQL
transaction) each block a thread. Both used asyncio's default executor: min(32, cores + 4)
threads, six on two cores. Six slow reports at once (a listing over a very large store, a
VerifyAuditLog of a long log) took every one, and each commit, so each durable write of
every caller, queued behind them (tests/test_report_threads.py). Commits now have threads
no report can take, and reports queue among themselves: one caller's take at most
``REPORTS_PER_CALLER`` threads at once, so its flood of listings leaves the others
threads of their own, and waits for its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
#: Reports at once per store. On PostgreSQL each holds a pooled session: the rest of the
#: pool stays for writes.
REPORT_THREADS = 4
#: Report threads one caller may hold at once.
REPORTS_PER_CALLER = 2


class StoreThreads:
    def __init__(self, backend: str, commit_threads: int) -> None:
        self._commits = ThreadPoolExecutor(
            commit_threads, thread_name_prefix=f"keyturn-{backend}-commit"
        )
        self._reports = ThreadPoolExecutor(
            REPORT_THREADS, thread_name_prefix=f"keyturn-{backend}-report"
        )
        #: Callers with reports running or waiting.
        self._callers: dict[str, _Share] = {}

    async def commit(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._commits, work)

    async def report(self, work: Callable[[], T], caller: str = "") -> T:
        """``work`` in a report thread; ``caller``'s reports (if named) wait for one of
        its own REPORTS_PER_CALLER places first. A place is given back when the work
        ends in its thread, not when its call is cancelled: a caller that gives up on its
        reports (short deadlines) still holds the threads they keep busy."""
        loop = asyncio.get_running_loop()
        if not caller:
            return await loop.run_in_executor(self._reports, work)
        share = self._callers.setdefault(caller, _Share())
        share.users += 1
        try:
            await share.places.acquire()
        except BaseException:
            self._leave(caller, share)
            raise

        def ended(_: Future[T]) -> None:  # in the report thread, or where it was cancelled
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                loop.call_soon_threadsafe(self._release, caller, share)

        running = self._reports.submit(work)
        running.add_done_callback(ended)
        return await asyncio.wrap_future(running)

    def _release(self, caller: str, share: _Share) -> None:
        share.places.release()
        self._leave(caller, share)

    def _leave(self, caller: str, share: _Share) -> None:
        share.users -= 1
        if not share.users:
            del self._callers[caller]

    def close(self) -> None:
        """Once nothing more is submitted; reports still running end on their own."""
        self._commits.shutdown(wait=False, cancel_futures=True)
        self._reports.shutdown(wait=False, cancel_futures=True)


class _Share:
    """One caller's places among the report threads, and its reports running or waiting
    for one (the share is dropped when none are left)."""

    __slots__ = ("places", "users")

    def __init__(self) -> None:
        self.places = asyncio.Semaphore(REPORTS_PER_CALLER)
        self.users = 0
