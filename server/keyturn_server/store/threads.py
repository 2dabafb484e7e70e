"""The threads a store blocks in, kept apart by what waits on them.

Reports (listings, statistics, the audit log's pages and its verification) and commits
(SQLite's COMMIT and its wait for another process's write lock; every PostgreSQL
transaction) each block a thread. Both used asyncio's default executor: min(32, cores + 4)
threads, six on two cores. Six slow reports at once (a listing over a very large store, a
VerifyAuditLog of a long log) took every one, and each commit, so each durable write of
every caller, queued behind them (tests/test_report_threads.py). Commits now have threads
no report can take, and reports queue among themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
#: Reports at once per store. On PostgreSQL each holds a pooled session: the rest of the
#: pool stays for writes.
REPORT_THREADS = 4


class StoreThreads:
    def __init__(self, backend: str, commit_threads: int) -> None:
        self._commits = ThreadPoolExecutor(
            commit_threads, thread_name_prefix=f"keyturn-{backend}-commit"
        )
        self._reports = ThreadPoolExecutor(
            REPORT_THREADS, thread_name_prefix=f"keyturn-{backend}-report"
        )

    async def commit(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._commits, work)

    async def report(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reports, work)

    def close(self) -> None:
        """Once nothing more is submitted; reports still running end on their own."""
        self._commits.shutdown(wait=False, cancel_futures=True)
        self._reports.shutdown(wait=False, cancel_futures=True)
