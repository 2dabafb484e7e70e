"""Destroyed material leaves the SQLite files, not only the row.

Destroying a key version's material sets its column to NULL, but the write-ahead log
keeps the page images written before, sealed material included, until later frames
overwrite them (the WAL is reused from its start, up to 64 MiB) or the file is
truncated. A copy of the data directory taken after RemoveKey's waiting period held a
destroyed version's sealed material thirteen times in ``keyturn.db-wal``, and with
MASTER_KEY it opened: material Keyturn said was destroyed (Cloud KMS: a destroyed
version cannot be recovered) was recoverable from the live files.

So after a commit that destroys material, the WAL is checkpointed into the database and
truncated to nothing (``PRAGMA wal_checkpoint(TRUNCATE)``), on a connection of its own
that waits for nobody: while another connection writes, or reads a snapshot the WAL
still holds, it cannot complete, and it is tried again every second until it does. In
the database file, ``secure_delete`` (set on every connection the store opens) zeroes
what a page no longer holds; Debian's SQLite does that by default, other builds do not.

Not reached: blocks the filesystem or the disk keep after a truncation (an encrypted
volume covers those), and backups made before the destruction. PostgreSQL's tables
are rewritten instead (store/postgres/scrub.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

from keyturn_server.store.sqlite_connections import connect

#: Seconds between tries while a reader or another writer holds the WAL.
RETRY = 1.0

Runner = Callable[[Callable[[], bool]], Awaitable[bool]]


class WalScrub:
    """Truncates the WAL after material was destroyed, retrying until it succeeds."""

    def __init__(self, path: Path, run: Runner) -> None:
        self._path = path
        #: Runs a blocking call in the store's commit thread.
        self._run = run
        self._wanted = False
        self._task: asyncio.Future[None] | None = None
        #: Truncations done (tests and metrics read it).
        self.done = 0

    def request(self) -> None:
        """Material was destroyed by a commit that just succeeded (on the event loop)."""
        self._wanted = True
        if self._task is None:
            self._task = asyncio.ensure_future(self._scrub())

    async def _scrub(self) -> None:
        try:
            while self._wanted:
                self._wanted = False
                if not await self._run(self._truncate):
                    self._wanted = True
                    await asyncio.sleep(RETRY)
        finally:
            self._task = None

    def _truncate(self) -> bool:
        try:
            conn = connect(self._path, create=False)
        except sqlite3.Error:
            return False
        try:
            conn.execute("PRAGMA busy_timeout = 0")  # never hold up the writer
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error:
            return False
        finally:
            conn.close()
        if busy:
            return False
        self.done += 1
        return True

    async def close(self) -> None:
        """At the store's close. A try still pending is dropped: the last connection to
        the file checkpoints the WAL and removes it as it closes."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
