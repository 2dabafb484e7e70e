"""The PostgreSQL store: several server replicas share one database.

- Writes run in worker threads, one transaction each, on pooled connections; rows that a
  rule reads and then changes are locked FOR UPDATE, so validations stay atomic across
  replicas.
- Event and audit appends take one transaction-scoped advisory lock, so sequences commit
  in order and the audit chain has one head (appends.py: how its waits end). Every
  replica publishes events to its subscribers strictly in sequence order by reading the
  log after each commit — its own, or another replica's announced with NOTIFY — so
  nothing is skipped or repeated.
- One replica at a time holds the scheduler's lease (leadership.py), and every handler
  re-checks its condition under row locks, so each rotation happens exactly once.
- Every connection survives the database going away (connections.py, link.py): while it
  is, work is refused at once with UNAVAILABLE and health says NOT_SERVING; once it is
  back, broken connections are replaced and the events missed meanwhile are published.
  A URL naming several hosts (``host=a,b`` with ``target_session_attrs=read-write``)
  follows a failover to a promoted standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from keyturn_server.clock import Clock
from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain.batching import MAX_PENDING, behind
from keyturn_server.domain.errors import KeyturnError
from keyturn_server.domain.events import Event
from keyturn_server.domain.leadership import Leadership
from keyturn_server.domain.repositories import CommitListener, Repository, StoreStatus
from keyturn_server.domain.write_shares import WriteShares
from keyturn_server.store.integrity import RowIntegrity
from keyturn_server.store.postgres.appends import AppendLock
from keyturn_server.store.postgres.connections import (
    WRITES,
    HoldBack,
    PgConnection,
    ReadConnection,
    as_domain_error,
    connect,
    connect_kwargs,
    describe,
    says_unwritable,
    unreachable,
)
from keyturn_server.store.postgres.leadership import DEFAULT_LEASE_TTL, PgLeadership
from keyturn_server.store.postgres.link import Link
from keyturn_server.store.postgres.scrub import PgScrub
from keyturn_server.store.postgres.upgrade import WRITERS_FROM, migrate
from keyturn_server.store.schema import NewerSchema
from keyturn_server.store.sql import SqlRepository
from keyturn_server.store.threads import StoreThreads

T = TypeVar("T")
log = logging.getLogger("keyturn.store")

CHANNEL = "keyturn_events"
#: Pooled sessions: a transaction holds one, in a commit thread of its own.
POOL_SIZE = 8
#: How long a call waits for a pooled connection before it is refused (UNAVAILABLE).
POOL_WAIT = 1.0
#: A session idle inside a transaction this long is ended by the server, so that a
#: stalled replica (SIGSTOP, a frozen VM) cannot hold row locks, the lease row or the
#: append lock for long: every other replica's appends wait for the append lock. A unit
#: of work runs its statements back to back (material is made before it begins), so an
#: idle second inside one already means a stalled process; it was 30 s, half a minute
#: of refused writes on every replica.
IDLE_IN_TRANSACTION = "-c idle_in_transaction_session_timeout=5000"


class PostgresStore:
    backend = "postgresql"

    def __init__(
        self, url: str, lease_ttl: timedelta = DEFAULT_LEASE_TTL, *, upgrade: bool = True
    ) -> None:
        self.url = url
        self.lease_ttl = lease_ttl
        try:
            setup = connect(url, "setup")
        except psycopg.Error as exc:
            raise OSError(f"cannot connect to PostgreSQL: {describe(exc)}") from None
        with setup:
            self.schema_version = migrate(setup, upgrade=upgrade)
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=2,
            max_size=POOL_SIZE,
            kwargs=connect_kwargs("pool", f"{IDLE_IN_TRANSACTION} {WRITES}"),
            # A pooled connection is checked as it is handed out, and replaced if broken.
            check=ConnectionPool.check_connection,
            timeout=POOL_WAIT,
            # The pool's own retries back off without bound (1 s, 2 s, 4 s...): let them
            # give up quickly while the database is away; the pool grows again on demand
            # once it is back, at once.
            reconnect_timeout=2,
            open=True,
            name="keyturn",
        )
        self._threads = StoreThreads("postgres", POOL_SIZE)
        self._append_lock = AppendLock(POOL_SIZE)
        self._link = Link(
            url,
            CHANNEL,
            notified=self._announced,
            refresh=self._refresh_connections,
            up=self._reached,
            down=self._status_changed,
        )
        self._reads = ReadConnection(url, lambda: self._link.problem, self._reads_repaired)
        self.integrity = RowIntegrity()
        self._reader = SqlRepository(self._reads, integrity=self.integrity)
        self._listeners: list[CommitListener] = []
        self._status_listeners: list[Callable[[], None]] = []
        self._published = self._reader.event_bounds()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._last_commit = timedelta(0)
        self._commits = 0
        self._problem = ""
        self._held = HoldBack("writes")
        self._closed = False
        self.max_pending = MAX_PENDING
        self.write_shares = WriteShares()
        self.newer = NewerSchema(self.schema_version)
        self.scrub = PgScrub(url)

    # --- schema and leadership ---------------------------------------------------------

    def leadership(self, holder: str, clock: Clock) -> Leadership:
        return PgLeadership(self.url, holder, clock, self.lease_ttl)

    # --- the Store protocol ------------------------------------------------------------

    def read(self) -> Repository:
        return self._reader

    def change_stamp(self) -> None:
        """None: no cache of stored records on PostgreSQL. Other replicas' commits reach
        this one by NOTIFY, after they are visible to readers, so a record cached until
        the notification arrives could be used after it was disabled elsewhere; and a
        per-call check (say, the newest event sequence) is a round trip to the database,
        about what the read it would save costs."""
        return None

    async def write(self, work: Callable[[Repository], T], caller: str = "") -> T:
        if caller and self.write_shares.per_caller:
            return await self.write_shares.run(caller, self._write(work))
        return await self._write(work)

    async def _write(self, work: Callable[[Repository], T]) -> T:
        self.start()
        self._refuse_while_unreachable()
        if self.newer.found:
            raise self.newer.refusal()
        if self._pending >= self.max_pending:  # see domain/batching.py
            raise behind(self.max_pending)
        # Units from one place in the code touch the same tables: one that met a locked
        # table is held back as a whole (HoldBack), without taking a pooled session.
        unit = getattr(work, "__code__", work)
        if self._held:
            self._held.check(unit)
        self._pending += 1
        try:
            value, callbacks, erased = await self._threads.commit(lambda: self._transaction(work))
        except KeyturnError as error:
            self._held.failed(unit, error, getattr(unit, "co_qualname", ""))
            raise
        finally:
            self._pending -= 1
        if self._held:
            self._held.served(unit)
        if erased:
            self.scrub.request(erased)
        self._publish_new()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("after-commit callback failed", extra={"category": "error"})
        return value

    def _transaction(
        self, work: Callable[[Repository], T]
    ) -> tuple[T, list[Callable[[], None]], int]:
        """``work`` in a transaction: its value, its after-commit callbacks, and the
        transaction's id if it destroyed material (else 0)."""
        started = time.perf_counter()
        try:
            with self._pool.connection() as conn:
                try:
                    with conn.transaction():
                        value, repo = self._unit(conn, work)
                        erased = _xid(conn) if repo.erased else 0
                except psycopg.errors.ReadOnlySqlTransaction:
                    # A session made read-only (default_transaction_read_only is read
                    # when it starts) or on a standby stays so: the pool replaces a
                    # closed connection, so the next write gets a session as it is now.
                    conn.close()
                    raise
        except psycopg.Error as exc:
            raise self._failed(exc, "write") from None
        self._set_problem("")
        self._commits += 1
        self._last_commit = timedelta(seconds=time.perf_counter() - started)
        return value, repo.after_commit_callbacks, erased

    def _unit(
        self, conn: psycopg.Connection[Any], work: Callable[[Repository], T]
    ) -> tuple[T, SqlRepository]:
        """``work`` in the transaction open on ``conn``; its value and repository."""
        adapter = PgConnection(conn)
        appended = False

        def lock() -> None:
            nonlocal appended
            if not appended:
                self._append_lock.take(conn)
                appended = True

        repo = SqlRepository(
            adapter, integrity=self.integrity, concurrent_writers=True, lock_appends=lock
        )
        value = work(repo)
        if repo.events:
            adapter.execute(f"NOTIFY {CHANNEL}")
        return value, repo

    async def report(self, work: Callable[[Repository], T], caller: str = "") -> T:
        self._refuse_while_unreachable()

        def run() -> T:
            try:
                with self._pool.connection() as conn, conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    return work(SqlRepository(PgConnection(conn), integrity=self.integrity))
            except psycopg.Error as exc:
                raise self._failed(exc, "report") from None

        return await self._threads.report(run, caller)

    def _refuse_while_unreachable(self) -> None:
        """Fail fast while the link says the database is away (no wait for a pool)."""
        problem = self._link.problem
        if problem:
            raise unreachable(problem)

    def _failed(self, exc: psycopg.Error, what: str) -> Exception:
        error = as_domain_error(exc)
        if error is None:
            return exc
        if says_unwritable(exc):  # health says so until a write goes through
            self._set_problem(f"a {what} failed: {describe(exc)}")
        return error

    def _set_problem(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            self._status_changed()

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def protect(self, protection: Protection) -> None:
        self.integrity.protect(protection)

    def add_tamper_listener(self, listener: Callable[[str], None]) -> None:
        self.integrity.listeners.append(listener)

    def add_status_listener(self, listener: Callable[[], None]) -> None:
        self._status_listeners.append(listener)

    def check_schema(self) -> bool:
        """(Every couple of seconds, on the loop:) a newer replica may have upgraded the
        shared database: one indexed read of its version."""
        if self.newer.found:
            return True
        try:
            row = self._reads.execute("SELECT MAX(version) AS v FROM keyturn_schema").fetchone()
            version = int(row["v"] or 0)
            writers = None
            if version > self.schema_version:  # did every newer step keep our writes?
                mine = (self.schema_version,)
                writers = self._reads.execute(WRITERS_FROM, mine).fetchone()["value"]
        except KeyturnError:
            return False  # the database is away: the link says so
        if self.newer.see(version, writers):
            self._set_problem(self.newer.problem)
        return bool(self.newer.found)

    async def recheck_writes(self) -> None:
        if not self._problem or self._link.problem or self.newer.found:
            return  # nothing failed, or the link (or a newer schema) says what is wrong
        try:
            await asyncio.to_thread(self._write_probe)
        except psycopg.Error as exc:
            log.debug("writes still fail: %s", describe(exc))
            return
        self._set_problem("")

    def _write_probe(self) -> None:
        """(A thread:) a write that changes nothing, on a session of its own: a new session
        has the database's defaults as they are now (read-only, or not any more). Once it
        goes through, the pool's sessions are replaced: those opened while the database
        was read-only stay so, and each would fail a caller's write first."""
        with connect(self.url, "probe") as conn:
            conn.execute("UPDATE keyturn_schema SET version = version WHERE false")
        self._pool.drain()

    def classify(self, exc: BaseException) -> KeyturnError | None:
        # Database errors are mapped where the units run (as_domain_error); PostgreSQL
        # keeps its own files, and its server's log says what happened to them.
        return None

    def database_time(self) -> datetime | None:
        try:
            row = self._reads.execute("SELECT clock_timestamp() AS now").fetchone()
        except KeyturnError:
            return None
        return row["now"] if row else None

    def status(self) -> StoreStatus:
        problem = self._link.problem or self.newer.problem or self._problem
        return StoreStatus(
            self.backend,
            not problem,
            self._last_commit,
            self._pending,
            self.schema_version,
            problem,
            reachable=self._link.reachable,
            commits=self._commits,
            writes=self._commits,  # one unit of work per transaction
        )

    def start(self) -> None:
        """Begin receiving other replicas' events and watching the link (once the loop
        runs)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._link.start()

    async def close(self) -> None:
        self._closed = True
        await self.scrub.close()
        await asyncio.to_thread(self._link.close)
        self._reads.close()
        await asyncio.to_thread(self._pool.close)
        self._threads.close()

    # --- recovery ----------------------------------------------------------------------

    def _on_loop(self, action: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(action)

    def _announced(self) -> None:
        """(Another thread:) events may have been committed: publish them."""
        self._on_loop(self._publish_new)

    def _reads_repaired(self) -> None:
        """(Another thread:) reads work again: publish what waited, and say so."""
        self._announced()
        self._status_changed()

    def _status_changed(self) -> None:
        for listener in self._status_listeners:
            self._on_loop(listener)

    def _refresh_connections(self) -> None:
        """(The link's thread, before work is let through:) replace the pooled and the
        reads' connections that broke while the database was away."""
        with contextlib.suppress(psycopg.Error):
            self._pool.check()
        self._reads.verify()

    def _reached(self) -> None:
        """(The link's thread:) the database answers again, or for the first time:
        publish what was committed while we could not listen, and clear the last
        write's failure (the database is demonstrably there)."""
        self._announced()
        self._on_loop(lambda: self._set_problem(""))
        self._status_changed()

    # --- ordered fan-out ---------------------------------------------------------------

    def _publish_new(self) -> None:
        """Publish every committed event after the last one published, in order."""
        if self._closed:
            return
        while True:
            try:
                events: list[Event] = self._reader.events_after(self._published, 1000)
            except KeyturnError:
                return  # published once the reads' connection is back (it calls again)
            if not events:
                return
            self._published = events[-1].sequence
            for listener in self._listeners:
                try:
                    listener(events)
                except Exception:
                    log.exception("commit listener failed", extra={"category": "error"})
            if len(events) < 1000:
                return


def _xid(conn: psycopg.Connection[Any]) -> int:
    """The id of the transaction open on ``conn`` (store/postgres/scrub.py)."""
    row = conn.execute("SELECT pg_current_xact_id()::text::bigint AS xid").fetchone()
    return int(row["xid"]) if row else 0
