"""The PostgreSQL store: several server replicas share one database.

- Writes run in worker threads, one transaction each, on pooled connections; rows that a
  rule reads and then changes are locked FOR UPDATE, so validations stay atomic across
  replicas.
- Event and audit appends take one transaction-scoped advisory lock, so sequences commit
  in order and the audit chain has one head. Every replica publishes events to its
  subscribers strictly in sequence order by reading the log after each commit — its own,
  or another replica's announced with NOTIFY — so nothing is skipped or repeated.
- One replica at a time holds a session advisory lock and runs the scheduler; every
  handler re-checks its condition under row locks, so each rotation happens exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain.errors import Unavailable
from keyturn_server.domain.events import Event
from keyturn_server.domain.repositories import CommitListener, Repository, StoreStatus
from keyturn_server.store.integrity import RowIntegrity
from keyturn_server.store.schema import migrations
from keyturn_server.store.sql import SqlRepository

T = TypeVar("T")
log = logging.getLogger("keyturn.store")

APPEND_LOCK = 0x6B74_0001  # serialises event and audit appends
LEADER_LOCK = 0x6B74_0002  # the scheduler's leadership
MIGRATE_LOCK = 0x6B74_0003
CHANNEL = "keyturn_events"


class _Cursor:
    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


class PgConnection:
    """Adapts psycopg to the repository's ``execute(sql with ?, params)``."""

    _translated: dict[str, str] = {}

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        query = self._translated.get(sql)
        if query is None:
            query = self._translated[sql] = sql.replace("%", "%%").replace("?", "%s")
        return _Cursor(self._conn.execute(query, list(params)))


def _connect_kwargs() -> dict[str, Any]:
    return {"row_factory": dict_row, "autocommit": True}


class PostgresStore:
    backend = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            setup = psycopg.connect(url, **_connect_kwargs())
        except psycopg.Error as exc:
            raise OSError(f"cannot connect to PostgreSQL: {exc}") from None
        with setup:
            self.schema_version = self._migrate(setup)
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=2, max_size=8, kwargs=_connect_kwargs(), open=True, name="keyturn"
        )
        self._read_conn = psycopg.connect(url, **_connect_kwargs())
        self.integrity = RowIntegrity()
        self._reader = SqlRepository(PgConnection(self._read_conn), integrity=self.integrity)
        self._leader_conn = psycopg.connect(url, **_connect_kwargs())
        self._leader = False
        self._listeners: list[CommitListener] = []
        self._published = self._reader.event_bounds()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._last_commit = timedelta(0)
        self._problem = ""
        self._closing = threading.Event()
        self._listener_thread: threading.Thread | None = None

    # --- schema and leadership ---------------------------------------------------------

    @staticmethod
    def _migrate(conn: psycopg.Connection[Any]) -> int:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS keyturn_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) AS v FROM keyturn_schema").fetchone()
            current = (row or {}).get("v") or 0
            steps = migrations("postgres")
            latest = steps[-1][0]
            if current > latest:
                raise OSError(f"the database has schema {current}, newer than this server")
            for version, sql in steps:
                if version > current:
                    with conn.transaction():
                        conn.execute(sql)
                        conn.execute("INSERT INTO keyturn_schema VALUES (%s)", (version,))
            return int(latest)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))

    def is_leader(self) -> bool:
        """Hold (or try to take) the scheduler's lock; False while another replica has it."""
        if not self._leader:
            try:
                row = self._leader_conn.execute(
                    "SELECT pg_try_advisory_lock(%s) AS got", (LEADER_LOCK,)
                ).fetchone()
                self._leader = bool(row and row["got"])
            except psycopg.Error:
                self._leader = False
        return self._leader

    # --- the Store protocol ------------------------------------------------------------

    def read(self) -> Repository:
        return self._reader

    async def write(self, work: Callable[[Repository], T]) -> T:
        self._ensure_listening()
        self._pending += 1
        try:
            value, callbacks = await asyncio.to_thread(self._transaction, work)
        finally:
            self._pending -= 1
        self._publish_new()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("after-commit callback failed", extra={"category": "error"})
        return value

    def _transaction(self, work: Callable[[Repository], T]) -> tuple[T, list[Callable[[], None]]]:
        started = time.perf_counter()
        try:
            with self._pool.connection() as conn, conn.transaction():
                adapter = PgConnection(conn)
                appended = False

                def lock() -> None:
                    nonlocal appended
                    if not appended:
                        adapter.execute("SELECT pg_advisory_xact_lock(?)", (APPEND_LOCK,))
                        appended = True

                repo = SqlRepository(
                    adapter, integrity=self.integrity, concurrent_writers=True, lock_appends=lock
                )
                value = work(repo)
                if repo.events:
                    adapter.execute(f"NOTIFY {CHANNEL}")
        except psycopg.OperationalError as exc:
            self._problem = f"write failed: {exc}"
            raise Unavailable(
                f"the store could not write: {exc}", reason="STORE_UNAVAILABLE"
            ) from None
        self._problem = ""
        self._last_commit = timedelta(seconds=time.perf_counter() - started)
        return value, repo.after_commit_callbacks

    async def report(self, work: Callable[[Repository], T]) -> T:
        def run() -> T:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                return work(SqlRepository(PgConnection(conn), integrity=self.integrity))

        return await asyncio.to_thread(run)

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def protect(self, protection: Protection) -> None:
        self.integrity.protect(protection)

    def add_tamper_listener(self, listener: Callable[[str], None]) -> None:
        self.integrity.listeners.append(listener)

    def status(self) -> StoreStatus:
        return StoreStatus(
            self.backend,
            not self._problem,
            self._last_commit,
            self._pending,
            self.schema_version,
            self._problem,
        )

    async def close(self) -> None:
        self._closing.set()
        if self._listener_thread is not None:
            await asyncio.to_thread(self._listener_thread.join, 5)
        for conn in (self._read_conn, self._leader_conn):
            with contextlib.suppress(psycopg.Error):
                conn.close()
        await asyncio.to_thread(self._pool.close)

    # --- ordered fan-out ---------------------------------------------------------------

    def _ensure_listening(self) -> None:
        if self._listener_thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._listener_thread = threading.Thread(
            target=self._listen, name="keyturn-pg-listen", daemon=True
        )
        self._listener_thread.start()

    def start(self) -> None:
        """Begin receiving other replicas' events (called once the loop runs)."""
        self._ensure_listening()

    def _listen(self) -> None:
        while not self._closing.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    loop = self._loop
                    if loop is not None:
                        loop.call_soon_threadsafe(self._publish_new)  # catch up after (re)connect
                    while not self._closing.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            if loop is not None:
                                loop.call_soon_threadsafe(self._publish_new)
            except psycopg.Error:
                log.warning(
                    "event listener lost its connection; reconnecting", extra={"category": "error"}
                )
                time.sleep(1)
            except RuntimeError:  # the loop closed under us: shutting down
                return

    def _publish_new(self) -> None:
        """Publish every committed event after the last one published, in order."""
        while True:
            try:
                events: list[Event] = self._reader.events_after(self._published, 1000)
            except psycopg.Error:
                log.exception("reading new events failed", extra={"category": "error"})
                return
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
