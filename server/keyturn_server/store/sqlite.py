"""The embedded store: one SQLite file in WAL mode, with group commit.

Durability: every acknowledged write is committed with ``synchronous=FULL``, which costs
an fsync (~0.3 ms here), so writes share commits. A batch is held open while writes keep
arriving (:mod:`keyturn_server.domain.batching`: not at all for a lone caller), then
opens a transaction (BEGIN IMMEDIATE: on the loop when the write lock is free, in a worker
thread when another process holds it), runs the waiting units of work on the event loop,
each inside its own SAVEPOINT, lets one turn of the loop add the units it brings, then
commits in a worker thread; only then are the callers answered. Units arriving during a
commit form the next batch: one thread hop and one fsync per batch, none per request.
A batch takes at most ``UNIT_LIMIT`` units, and past ``MAX_PENDING`` waiting a write is
refused at once (STORE_BEHIND): see :mod:`keyturn_server.domain.batching`.
(BEGIN in a worker thread, measured before batches were held open, made batches bigger
only by the time its hop took; the hold does that on purpose now.)

Units run one after another on the loop, so each sees the effects of the ones before it:
that is what makes a validation's checks and its usage count atomic without row locks.
Other processes serving the same file (``--workers``) are serialised by the write lock,
taken before a batch reads anything. Measured against a writer thread that ran the units
itself, this serves a little more and waits less at p99 (bench/): a writer thread must
win the GIL back from the busy loop after every SQLite call.

Reads run on a second connection (reports in worker threads, on connections of their own
opened with the store: :mod:`keyturn_server.store.sqlite_connections`); WAL lets them
proceed during a commit, and they only ever see committed data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from keyturn_server.clock import Clock
from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain.batching import MAX_PENDING, UNIT_LIMIT, BatchWindow, behind
from keyturn_server.domain.errors import KeyturnError, Unavailable
from keyturn_server.domain.events import Event
from keyturn_server.domain.leadership import Leadership, SoleLeader
from keyturn_server.domain.repositories import CommitListener, Repository, StoreStatus
from keyturn_server.domain.write_shares import WriteShares
from keyturn_server.store import damage, files
from keyturn_server.store.file_upgrade import migrate
from keyturn_server.store.integrity import RowIntegrity
from keyturn_server.store.schema import NewerSchema
from keyturn_server.store.scrub import WalScrub
from keyturn_server.store.sql import SqlRepository
from keyturn_server.store.sqlite_connections import (
    BUSY_TIMEOUT_MS,
    ReportConnections,
    StoreOpenError,
    check,
    connect,
    create_private_file,
    store_error,
)
from keyturn_server.store.stall import CommitWatch
from keyturn_server.store.threads import REPORT_THREADS, StoreThreads

T = TypeVar("T")
CATCH_UP_BATCH = 1000
#: While commits keep failing (a full disk), how often the log says so again.
REMIND_EVERY = 60.0
log = logging.getLogger("keyturn.store")
#: The size the write-ahead log is cut back to once it starts again from its beginning.
#: SQLite keeps it at the largest size it reached otherwise: a long read under load (the
#: WAL cannot be checkpointed past a reader's snapshot) left gigabytes behind.
WAL_LIMIT = 64 << 20
#: The meta row that recheck_writes changes while commits fail.
WRITES_RECHECKED = "writes_rechecked"


@dataclass
class _Outcome:
    """A unit of work that ran and waits for its batch's commit."""

    future: asyncio.Future[Any]
    value: Any
    events: list[Event] = field(default_factory=list)
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    #: It destroyed key material (store/scrub.py).
    erased: bool = False


def _begin_problem(exc: sqlite3.Error) -> str:
    """Why a transaction could not begin. Before, a write lock held past the wait (a
    sibling worker stalled on the disk, another program) refused every change while
    health said SERVING and the log nothing."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY:
        return (
            f"another process has held the database's write lock for more than "
            f"{BUSY_TIMEOUT_MS // 1000} s (a worker stalled on the disk, or another program)"
        )
    return str(exc)


class SqliteStore:
    backend = "sqlite"

    def __init__(self, path: Path, *, shared: bool = False, upgrade: bool = True) -> None:
        """``shared``: other processes write this file too (``--workers``); commit
        listeners then get every committed event in sequence order, theirs included
        (see :meth:`catch_up`), not only this process's. ``upgrade=False`` (operator
        commands): a file of an older schema is refused, not upgraded."""
        self.path = path
        self.shared = shared
        create_private_file(path)
        try:
            setup = connect(path)
            setup.execute("PRAGMA journal_mode = WAL")
            check(setup, path)
            self.schema_version = migrate(setup, path, upgrade=upgrade)
            setup.close()
        except sqlite3.DatabaseError as exc:
            raise StoreOpenError(f"{path} cannot be used: {exc}") from None
        self._writer = connect(path)
        self._writer.execute("PRAGMA synchronous = FULL")
        self._writer.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
        # BEGIN is tried on the loop, where waiting for the lock would stall everything.
        self._writer.execute("PRAGMA busy_timeout = 0")
        self._read_conn = connect(path)
        self._read_conn.execute("PRAGMA query_only = 1")
        # Opened now: opening one later can wait for a stalled disk (sqlite_connections.py).
        self._report_conns = ReportConnections(path, REPORT_THREADS)
        #: One writer connection, so one commit thread.
        self._threads = StoreThreads("sqlite", 1)
        self.scrub = WalScrub(path, self._threads.commit)
        self.integrity = RowIntegrity()
        self._reader = SqlRepository(self._read_conn, integrity=self.integrity)
        self._listeners: list[CommitListener] = []
        self._batch: list[_Outcome] = []
        self._waiting: list[tuple[Callable[[Repository], Any], asyncio.Future[Any]]] = []
        self._open = False
        self._cycle: asyncio.Future[None] | None = None
        self._last_commit = timedelta(0)
        self._problem = ""
        #: Set for good once SQLite finds a damaged page (store/damage.py).
        self._damage = ""
        self.newer = NewerSchema(self.schema_version)
        #: Commits failed in a row, and since when (monotonic), for the log's transitions.
        self._failed_commits = 0
        self._failing_since = 0.0
        self._reminded = 0.0
        self._status_listeners: list[Callable[[], None]] = []
        #: A commit waiting for the disk for too long (store/stall.py).
        self.stall = CommitWatch()
        self._closed = False
        self.window = BatchWindow()
        self.unit_limit = UNIT_LIMIT
        self.max_pending = MAX_PENDING
        self.write_shares = WriteShares()
        self.commits = 0
        self.writes = 0
        #: Last event sequence given to the commit listeners (shared mode).
        self._published = self._reader.event_bounds()[1]
        self._data_version = self._data_version_now()
        #: Called after a commit that made events (shared mode: wake the other workers).
        self.announce: Callable[[], None] | None = None
        self.files = files.FileWatch(path)
        self._copying: asyncio.Future[None] | None = None

    # --- the Store protocol ----------------------------------------------------------

    def read(self) -> Repository:
        return self._reader

    async def write(self, work: Callable[[Repository], T], caller: str = "") -> T:
        if caller and self.write_shares.per_caller:
            return await self.write_shares.run(caller, self._write(work))
        return await self._write(work)

    async def _write(self, work: Callable[[Repository], T]) -> T:
        if self._closed:
            raise Unavailable("the store is closed", reason="STORE_UNAVAILABLE")
        if self._damage:
            raise damage.refusal()
        if self.newer.found:
            raise self.newer.refusal()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.window.arrived()
        if self._open:
            self._run(work, future)
        elif len(self._waiting) >= self.max_pending:
            raise behind(self.max_pending)
        else:
            self._waiting.append((work, future))
            if self._cycle is None:
                self._cycle = asyncio.ensure_future(self._batches())
        # A cancelled caller cancels only its wait: the unit commits with its batch.
        return await future

    def _run(self, work: Callable[[Repository], Any], future: asyncio.Future[Any]) -> None:
        """Run one unit now, in its own savepoint of the open transaction."""
        conn = self._writer
        repo = SqlRepository(conn, integrity=self.integrity)
        conn.execute("SAVEPOINT unit")
        try:
            value = work(repo)
        except BaseException as exc:  # the unit's own failure: undo it, keep the batch
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
            refused = isinstance(exc, sqlite3.OperationalError | sqlite3.IntegrityError)
            error = store_error(exc) if isinstance(exc, sqlite3.Error) and refused else exc
            error = self.classify(exc) or error
            if not future.done():
                future.set_exception(error)
            return
        conn.execute("RELEASE unit")
        self._batch.append(
            _Outcome(future, value, repo.events, repo.after_commit_callbacks, repo.erased)
        )

    async def _batches(self) -> None:
        try:
            while self._waiting:
                await self.window.hold(len(self._waiting))
                if self._files_lost():
                    self._fail(self._waiting, Unavailable(files.REFUSAL, reason="STORE_FILE_GONE"))
                    self._waiting = []
                    continue
                if self._damage:
                    self._fail(self._waiting, damage.refusal())
                    self._waiting = []
                    continue
                try:
                    await self._begin()
                except sqlite3.Error as exc:
                    known = self.classify(exc)
                    if known is None:  # said and shown as a failed commit: nothing changes
                        self._commit_failed(_begin_problem(exc))
                    self._fail(self._waiting, known or store_error(exc))
                    self._waiting = []
                    continue
                if self._schema_upgraded(self._writer):  # in the transaction: none slips past
                    self._writer.execute("ROLLBACK")
                    self._fail(self._waiting, self.newer.refusal())
                    self._waiting = []
                    continue
                # At most unit_limit units a transaction: a backlog after a stall goes
                # in several, and the loop serves other calls between them.
                waiting = self._waiting[: self.unit_limit]
                self._waiting = self._waiting[self.unit_limit :]
                self._open = True
                for work, future in waiting:
                    self._run(work, future)
                await asyncio.sleep(0)  # the units this turn of the loop brings join in
                self._open = False
                batch, self._batch = self._batch, []
                self.window.closed(len(batch))
                await self._commit(batch)
        finally:
            self._cycle = None

    async def _begin(self) -> None:
        """Take the write lock: on the loop when it is free (no thread hop), else in a
        worker thread that waits for it (another process writes)."""
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                raise
            await self._threads.commit(self._begin_waiting)

    def _begin_waiting(self) -> None:
        self._writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        finally:
            self._writer.execute("PRAGMA busy_timeout = 0")

    async def report(self, work: Callable[[Repository], T], caller: str = "") -> T:
        if self._files_lost():
            raise Unavailable(files.REFUSAL, reason="STORE_FILE_GONE")

        def run() -> T:
            with self._report_conns.snapshot() as conn:
                return work(SqlRepository(conn, integrity=self.integrity))

        return await self._threads.report(run, caller)

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def add_status_listener(self, listener: Callable[[], None]) -> None:
        self._status_listeners.append(listener)

    def _schema_upgraded(self, conn: sqlite3.Connection) -> bool:
        """Whether a newer Keyturn upgraded the file's schema, as ``conn`` sees it (about
        a microsecond)."""
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if self.newer.see(version):
            self._set_problem(self.newer.problem)
        return bool(self.newer.found)

    def check_schema(self) -> bool:
        return bool(self.newer.found) or self._schema_upgraded(self._read_conn)

    def _set_problem(self, problem: str) -> None:
        # These stay the problem: nothing but a restart (and a restore) ends them.
        problem = self.files.problem or self._damage or self.newer.problem or problem
        if problem != self._problem:
            self._problem = problem
            for listener in self._status_listeners:
                listener()

    def leadership(self, holder: str, clock: Clock) -> Leadership:
        return SoleLeader(self, clock, holder)

    def start(self) -> None:
        pass

    def protect(self, protection: Protection) -> None:
        self.integrity.protect(protection)

    def add_tamper_listener(self, listener: Callable[[str], None]) -> None:
        self.integrity.listeners.append(listener)

    def database_time(self) -> datetime | None:
        return None  # this host's clock: the processes on it share it

    def status(self) -> StoreStatus:
        self._files_lost()  # health checks look every few seconds, idle or not
        problem = self._problem or self.stall.problem()
        return StoreStatus(
            backend=self.backend,
            writable=not problem,
            last_commit=self._last_commit,
            pending_writes=len(self._batch) + len(self._waiting),
            schema_version=self.schema_version,
            problem=problem,
            commits=self.commits,
            writes=self.writes,
        )

    async def close(self) -> None:
        self._closed = True
        while self._cycle is not None:
            await self._cycle
        if self._copying is not None:
            await self._copying
        await self.scrub.close()
        self._threads.close()
        self._writer.close()
        self._read_conn.close()
        self._report_conns.close()

    def classify(self, exc: BaseException) -> KeyturnError | None:
        """What ``exc``, raised by a read or a write of this store, means to a caller:
        a damaged file (which makes the store damaged, and is said once); else None."""
        if damage.is_refusal(exc):
            return exc
        if not damage.is_damage(exc):
            return None
        if not self._damage:
            self._damage = f"database file damaged: {exc}"
            log.error(
                "the database file is damaged; changes are refused until the last backup is "
                "restored",
                extra={
                    "category": "error",
                    "problem": str(exc),
                    "restore": f"keyturn backup restore <backup> --data-dir {self.path.parent}",
                },
            )
            self._set_problem(self._damage)
        return damage.refusal()

    # --- the files under the store (store/files.py) ------------------------------------

    def _files_lost(self) -> bool:
        """Whether the database file or its WAL was removed or replaced; the first time,
        say so, and save a copy of what this server still sees (once, from the loop)."""
        if not self.files.problem:
            if not self.files.check():
                return False
            log.error(
                "the database file is gone from under the server",
                extra={"category": "error", "problem": self.files.problem},
            )
            self._set_problem(self.files.problem)
        if self._copying is None:
            with contextlib.suppress(RuntimeError):  # not on the loop: the next check copies
                loop = asyncio.get_running_loop()
                self._copying = loop.run_in_executor(None, self._save_copy)
        return True

    def _save_copy(self) -> None:
        try:
            saved = files.save_copy(self._read_conn, self.path)
        except (OSError, sqlite3.Error):
            log.exception("saving a copy of the lost database failed", extra={"category": "error"})
            return
        log.error(
            "saved a copy of the lost database; stop the server and restore it",
            extra={
                "category": "error",
                "copy": str(saved),
                "restore": f"keyturn backup restore {saved} --data-dir {self.path.parent}",
            },
        )

    # --- commits ------------------------------------------------------------------------

    async def _commit(self, batch: list[_Outcome]) -> None:
        started = time.perf_counter()
        try:
            ending = "COMMIT" if batch else "ROLLBACK"
            self.stall.began()
            try:
                await self._threads.commit(lambda: self._writer.execute(ending))
            finally:
                if self.stall.ended():
                    for listener in self._status_listeners:
                        listener()
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("ROLLBACK")
            known = self.classify(exc)
            if known is None:
                self._commit_failed(str(exc))
            self._fail([(None, o.future) for o in batch], known or store_error(exc))
            return
        if not batch:
            return
        self._commit_succeeded()
        self.commits += 1
        self.writes += len(batch)
        self._last_commit = timedelta(seconds=time.perf_counter() - started)
        if any(outcome.erased for outcome in batch):
            self.scrub.request()
        events = [e for outcome in batch for e in outcome.events]
        if events and self.shared:
            self.catch_up()
            if self.announce is not None:
                self.announce()
        elif events:
            self._published = events[-1].sequence
            self._tell_listeners(events)
        for outcome in batch:
            for callback in outcome.callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("after-commit callback failed", extra={"category": "error"})
            if not outcome.future.done():
                outcome.future.set_result(outcome.value)

    async def recheck_writes(self) -> None:
        if not self._failed_commits or self.files.problem or self._damage or self.newer.found:
            return  # nothing failed, or what did is not going to pass (_set_problem)
        # A real change: a commit that changes nothing writes nothing, and would succeed
        # on a disk with no room left.
        stamp = str(time.time_ns()).encode()
        with contextlib.suppress(KeyturnError):
            await self.write(lambda repo: repo.set_meta(WRITES_RECHECKED, stamp))

    def _commit_failed(self, problem: str) -> None:
        """Say so when commits start failing, every REMIND_EVERY while they go on, and when
        the problem changes; not once per commit. Under load with a full disk that was
        hundreds of lines a second, written to a disk that had no room for them."""
        now = time.monotonic()
        self._failed_commits += 1
        changed = f"commit failed: {problem}" != self._problem
        if self._failed_commits == 1 or changed or now - self._reminded >= REMIND_EVERY:
            if self._failed_commits == 1:
                self._failing_since = now
            self._reminded = now
            log.error(
                "store commits fail: calls that change something are refused until they "
                "succeed again",
                extra={
                    "category": "error",
                    "problem": problem,
                    "failed_commits": self._failed_commits,
                    "seconds": round(now - self._failing_since, 1),
                },
            )
        self._set_problem(f"commit failed: {problem}")

    def _commit_succeeded(self) -> None:
        if self._failed_commits:
            log.warning(
                "store commits succeed again",
                extra={
                    "category": "error",
                    "failed_commits": self._failed_commits,
                    "down_seconds": round(time.monotonic() - self._failing_since, 1),
                },
            )
            self._failed_commits = 0
        self._set_problem("")

    def _tell_listeners(self, events: list[Event]) -> None:
        for listener in self._listeners:
            try:
                listener(events)
            except Exception:
                log.exception("commit listener failed", extra={"category": "error"})

    # --- other processes' commits (shared mode) ------------------------------------------

    def catch_up(self) -> None:
        """Give the commit listeners every committed event after the last one they got,
        in sequence order, whichever process committed it. The write lock serialises
        commits, so sequences commit in order and nothing is skipped."""
        while True:
            try:
                events = self._reader.events_after(self._published, CATCH_UP_BATCH)
            except sqlite3.Error:
                log.exception("reading new events failed", extra={"category": "error"})
                return
            if not events:
                return
            self._published = events[-1].sequence
            self._tell_listeners(events)
            if len(events) < CATCH_UP_BATCH:
                return

    def _data_version_now(self) -> int:
        return int(self._read_conn.execute("PRAGMA data_version").fetchone()[0])

    def change_stamp(self) -> int:
        """SQLite's ``data_version`` of the read connection: it moves on every commit of
        any other connection to the file, this process's writer included, so it covers
        other workers' commits and edits made behind the server's back. About 1 µs."""
        return int(self._read_conn.execute("PRAGMA data_version").fetchone()[0])

    def changed(self) -> bool:
        """Whether anything was committed (by any connection, this process's included)
        since the last call: a cheap check, the safety net under the workers' wake-ups."""
        now = self._data_version_now()
        changed, self._data_version = now != self._data_version, now
        return changed

    @staticmethod
    def _fail(items: list[tuple[Any, asyncio.Future[Any]]], error: BaseException) -> None:
        for _, future in items:
            if not future.done():
                future.set_exception(error)
