"""The embedded store: one SQLite file in WAL mode, with group commit.

Durability: every acknowledged write is committed with ``synchronous=FULL``, which costs
an fsync (~0.3 ms here). One writer thread therefore takes every unit of work that is
waiting, runs each inside its own SAVEPOINT of one transaction, and commits them
together: one fsync and one thread hop per batch instead of per request. Units run one
after another, so each sees the previous ones' effects: that is what makes a
validation's checks and its usage count atomic without row locks.

Reads run directly on the event loop on a second connection; WAL lets them proceed
while the writer commits, and they only ever see committed data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from keyturn_server.domain.errors import KeyturnError, ResourceExhausted, Unavailable
from keyturn_server.domain.events import Event
from keyturn_server.store.base import CommitListener, StoreStatus
from keyturn_server.store.schema import migrations
from keyturn_server.store.sql import SqlRepository

T = TypeVar("T")
log = logging.getLogger("keyturn.store")

MAX_BATCH = 512
_STOP = object()


class StoreOpenError(Exception):
    """The database file cannot be used (not a database, damaged, newer schema...)."""


@dataclass
class _Work:
    fn: Callable[[SqlRepository], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Outcome:
    work: _Work
    value: Any = None
    error: BaseException | None = None
    events: list[Event] = field(default_factory=list)
    callbacks: list[Callable[[], None]] = field(default_factory=list)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
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
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return ResourceExhausted(
            "the store is full (no space left for the database); nothing of this request was kept",
            reason="STORE_FULL",
        )
    return Unavailable(
        f"the store could not write ({exc}); nothing of this request was kept",
        reason="STORE_UNAVAILABLE",
    )


def migrate(conn: sqlite3.Connection) -> int:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    steps = migrations("sqlite")
    latest = steps[-1][0]
    if current > latest:
        raise StoreOpenError(
            f"the database has schema version {current}, newer than this server ({latest})"
        )
    for version, sql in steps:
        if version > current:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
    return int(latest)


class SqliteStore:
    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        create_private_file(path)
        try:
            setup = _connect(path)
            setup.execute("PRAGMA journal_mode = WAL")
            check(setup, path)
            self.schema_version = migrate(setup)
            setup.close()
        except sqlite3.DatabaseError as exc:
            raise StoreOpenError(f"{path} cannot be used: {exc}") from None
        self._writer_conn = _connect(path)
        self._writer_conn.execute("PRAGMA synchronous = FULL")
        self._read_conn = _connect(path)
        self._read_conn.execute("PRAGMA query_only = 1")
        self._reader = SqlRepository(self._read_conn)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._listeners: list[CommitListener] = []
        self._pending = 0
        self._last_commit = timedelta(0)
        self._problem = ""
        self._thread = threading.Thread(target=self._writer_loop, name="keyturn-sqlite-writer")
        self._thread.daemon = True
        self._thread.start()

    # --- the Store protocol ----------------------------------------------------------

    def read(self) -> SqlRepository:
        return self._reader

    async def write(self, work: Callable[[SqlRepository], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending += 1
        self._queue.put(_Work(work, future, loop))
        try:
            return await future
        finally:
            self._pending -= 1

    async def report(self, work: Callable[[SqlRepository], T]) -> T:
        def run() -> T:
            conn = _connect(self.path)
            try:
                conn.execute("PRAGMA query_only = 1")
                conn.execute("BEGIN")  # one consistent snapshot for every query of the report
                return work(SqlRepository(conn))
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def status(self) -> StoreStatus:
        return StoreStatus(
            backend=self.backend,
            writable=not self._problem,
            last_commit=self._last_commit,
            pending_writes=self._pending,
            schema_version=self.schema_version,
            problem=self._problem,
        )

    async def close(self) -> None:
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._writer_conn.close()
        self._read_conn.close()

    # --- the writer thread -----------------------------------------------------------

    def _writer_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(item)
            self._run_batch([w for w in batch if isinstance(w, _Work)])

    def _run_batch(self, batch: list[_Work]) -> None:
        conn = self._writer_conn
        started = time.perf_counter()
        outcomes: list[_Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_all(batch, exc)
            return
        for work in batch:
            outcomes.append(self._run_one(conn, work))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._fail_all(batch, exc)
            return
        self._problem = ""
        self._last_commit = timedelta(seconds=time.perf_counter() - started)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome.work.loop, []).append(outcome)
        for loop, group in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._deliver, group)

    def _run_one(self, conn: sqlite3.Connection, work: _Work) -> _Outcome:
        repo = SqlRepository(conn)
        conn.execute("SAVEPOINT unit")
        try:
            value = work.fn(repo)
        except BaseException as exc:  # the unit's own failure: undo it, keep the batch
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
            if isinstance(exc, sqlite3.OperationalError):
                exc = store_error(exc)
            return _Outcome(work, error=exc)
        conn.execute("RELEASE unit")
        return _Outcome(work, value, None, repo.events, repo.after_commit_callbacks)

    def _fail_all(self, batch: list[_Work], exc: sqlite3.Error) -> None:
        self._problem = f"commit failed: {exc}"
        log.error("store commit failed", extra={"category": "error", "problem": str(exc)})
        error = store_error(exc)
        for work in batch:
            with contextlib.suppress(RuntimeError):
                work.loop.call_soon_threadsafe(_settle, work.future, None, error)

    # --- back on the event loop ------------------------------------------------------

    def _deliver(self, outcomes: list[_Outcome]) -> None:
        events = [e for o in outcomes if o.error is None for e in o.events]
        if events:
            for listener in self._listeners:
                try:
                    listener(events)
                except Exception:
                    log.exception("commit listener failed", extra={"category": "error"})
        for outcome in outcomes:
            if outcome.error is None:
                for callback in outcome.callbacks:
                    try:
                        callback()
                    except Exception:
                        log.exception("after-commit callback failed", extra={"category": "error"})
            _settle(outcome.work.future, outcome.value, outcome.error)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
