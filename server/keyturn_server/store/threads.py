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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from keyturn_server.caller_threads import CallerThreads

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
        self._reports = CallerThreads(
            REPORT_THREADS, REPORTS_PER_CALLER, f"keyturn-{backend}-report"
        )

    async def commit(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._commits, work)

    async def report(self, work: Callable[[], T], caller: str = "") -> T:
        """``work`` in a report thread; ``caller``'s reports (if named) wait for one of
        its own REPORTS_PER_CALLER places first (caller_threads.py)."""
        return await self._reports.run(caller, work)

    def close(self) -> None:
        """Once nothing more is submitted; reports still running end on their own."""
        self._commits.shutdown(wait=False, cancel_futures=True)
        self._reports.close()
