"""The embedded store's connections: how its file is opened and checked (its schema
upgrade is :mod:`keyturn_server.store.file_upgrade`), and the connections reports read
through.

Reports read through connections opened once, with the store, and handed from one
report to the next. Each report used to open a connection of its own, and opening one
is not only a read: run as root, SQLite gives the -wal and -shm files the database's
owner (``fchown``), and a filesystem that has stopped answering (frozen, a hung network
volume) holds that call for as long as it lasts. Every listing, statistics page and
audit page then waited out its caller's deadline while the disk was away, although
what they read was in memory; the reports' threads were held, and the reads of every
other caller queued behind them. A connection that is already open reads on.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from keyturn_server.domain.errors import Aborted, KeyturnError, ResourceExhausted, Unavailable

#: How long a connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 5000


class StoreOpenError(Exception):
    """The database file cannot be used (not a database, damaged, newer schema...).
    ``newer``: the file's schema, when a newer Keyturn made or upgraded it; ``older``:
    its schema, when it is older and was not to be upgraded."""

    def __init__(self, message: str, newer: int = 0, older: int = 0) -> None:
        super().__init__(message)
        self.newer = newer
        self.older = older


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """A connection as the server opens it: autocommit (transactions are explicit), rows
    by column name, and a busy timeout for another process holding the write lock.
    ``create=False``: fail rather than make an empty database where the file was."""
    target = path if create else f"{path.resolve().as_uri()}?mode=rw"
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, uri=not create)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA secure_delete = ON")  # what a row no longer holds is zeroed
    return conn


def create_private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (0600) if it does not exist. SQLite
    gives the -wal and -shm files the same mode as the database file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def check(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged file at start (truncated, edited) instead of serving garbage later.
    quick_check reads every page once: a few seconds for millions of records."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise StoreOpenError(f"{path} is damaged: " + "; ".join(problems))


def store_error(exc: sqlite3.Error) -> KeyturnError:
    """A write that SQLite refused, as the status the caller should see."""
    if isinstance(exc, sqlite3.IntegrityError):
        # Another process inserted the same row first (units here run one at a time).
        return Aborted(
            "a concurrent change conflicted with this one; nothing of it was kept: retry",
            reason="STORE_CONFLICT",
            detail=str(exc),
        )
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return ResourceExhausted(
            "the store is full (no space left for the database); nothing of this request was kept",
            reason="STORE_FULL",
        )
    return Unavailable(
        "the store could not write; nothing of this request was kept",
        reason="STORE_UNAVAILABLE",
        detail=str(exc),
    )


class ReportConnections:
    """Read-only connections, opened with the store, one per report that may run at once.

    A report takes one, reads in one transaction (one consistent snapshot for all its
    queries), and gives it back; one whose report failed is rolled back first."""

    def __init__(self, path: Path, count: int) -> None:
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False
        for _ in range(count):
            conn = connect(path, create=False)
            conn.execute("PRAGMA query_only = 1")
            # The first read opens the -wal and -shm (and, as root, chowns them): now.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            self._idle.put(conn)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        # There are as many as report threads: one is idle whenever a report runs.
        conn = self._idle.get()
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")  # only read: nothing to keep
            if self._closed:
                conn.close()
            else:
                self._idle.put(conn)

    def close(self) -> None:
        """Close the idle connections; those in a report close when it ends."""
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
