"""Connections to PostgreSQL that survive it: how each is opened, how a failure becomes the
status a caller sees, the bounded backoff of every reconnection, and the self-healing
connection that serves reads on the event loop.

A restart, a failover or a killed backend breaks a connection; the next use fails. That
call is answered UNAVAILABLE (retryable) and the connection is replaced in a background
thread, retrying every 0.1 s growing to 2 s, so a database that is back is used again
within about two seconds and the event loop never waits for a connect.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from keyturn_server.domain.errors import (
    ONE_CALLS_FATE,
    Aborted,
    DataLoss,
    KeyturnError,
    Unavailable,
)

log = logging.getLogger("keyturn.store")

#: A dead peer is noticed within seconds on both sides, even when no packet says so (a
#: host that vanished): TCP keepalives from the client, and from the server for its
#: sessions (so that a dead replica's scheduler lock is released), and a bound on
#: unacknowledged sends.
_SESSION = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=10000"
)


def connect_kwargs(role: str, options: str = "") -> dict[str, Any]:
    """Keyword arguments of psycopg.connect for a connection of ``role`` (it shows in
    pg_stat_activity.application_name as keyturn/ROLE)."""
    return {
        "row_factory": dict_row,
        "autocommit": True,
        "connect_timeout": 3,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
        "application_name": f"keyturn/{role}",
        "options": f"{_SESSION} {options}".strip(),
    }


def connect(url: str, role: str, options: str = "") -> psycopg.Connection[Any]:
    return psycopg.connect(url, **connect_kwargs(role, options))


def describe(exc: BaseException) -> str:
    """One line: libpq's messages span several."""
    return " ".join(str(exc).split()) or type(exc).__name__


def as_domain_error(exc: psycopg.Error) -> KeyturnError | None:
    """The status a caller sees for a database failure; None for a defect (a bad
    statement), which stays an internal error."""
    if exc.sqlstate in ("XX001", "XX002"):  # data_corrupted, index_corrupted
        return DataLoss(
            "the database reports damaged data; an operator restores it from a backup",
            reason="STORE_CORRUPT",
            detail=describe(exc),
        )
    if exc.sqlstate == "55P03" and "tuple" in (exc.diag.context or ""):
        # "while locking tuple (0,8) in relation ...": a row another transaction holds
        # (a long one, or one left open), not a table. It belongs to that row: other
        # executions of the statement, on other rows, are not held back (HoldBack).
        return Unavailable(
            "a record this call needs is held by another transaction in the database (a "
            "long one, or one left open); nothing of this request was done: retry",
            reason="STORE_ROW_LOCKED",
        )
    if exc.sqlstate == "55P03":  # lock_not_available: the session's lock_timeout
        return Unavailable(
            "a table this call needs is locked in the database (VACUUM FULL, CLUSTER, "
            "ALTER TABLE, or a LOCK TABLE left open); nothing of this request was done: retry",
            reason="STORE_LOCKED",
        )
    if exc.sqlstate == "57014":  # query_canceled: statement_timeout, or an administrator
        return Unavailable(
            "the database cancelled a statement (it ran past its time limit, or was "
            "cancelled by an administrator); nothing of this request was done: retry",
            reason="STORE_SLOW",
        )
    if exc.sqlstate == "25P03":  # idle_in_transaction_session_timeout
        # This process left its transaction idle (paused, starved of CPU) and the database
        # ended the session, releasing its locks for the other replicas (store.py).
        return Unavailable(
            "the database ended this call's transaction: this server left it idle longer "
            "than the database allows (the process was paused or starved of CPU); nothing "
            "of this request was kept: retry",
            reason="STORE_STALLED",
        )
    if exc.sqlstate == "25006":  # read_only_sql_transaction
        # A DBA's maintenance (default_transaction_read_only) or a session on a hot
        # standby: nothing was written, and the database takes writes again later.
        return Unavailable(
            "the database is read-only at the moment (maintenance, or a standby); nothing "
            "of this request was kept: retry",
            reason="STORE_READ_ONLY",
        )
    if (exc.sqlstate or "")[:2] in ("40", "23"):  # transaction rollback, integrity
        # A deadlock, a serialization failure, or a concurrent insert of the same row:
        # the transaction was rolled back whole; trying again can succeed.
        return Aborted(
            "a concurrent change conflicted with this one; nothing of it was kept: retry",
            reason="STORE_CONFLICT",
            detail=describe(exc),
        )
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Unavailable(
            "the database is unavailable; retry", reason="STORE_UNAVAILABLE", detail=describe(exc)
        )
    return None


def unreachable(problem: str) -> Unavailable:
    """The refusal while the database is away; ``problem`` (libpq's words: host, port,
    database, user) is for operators."""
    return Unavailable(
        "the database is unreachable; nothing of this request was done: retry",
        reason="STORE_UNAVAILABLE",
        detail=problem,
    )


def says_unwritable(exc: psycopg.Error) -> bool:
    """Whether ``exc``, failing a write, says the database cannot take writes now (it is
    away, read-only, out of room: health says NOT_SERVING until a write goes through),
    rather than that one transaction could not (a deadlock, a serialization failure, a
    conflicting insert, a table locked for maintenance: the caller retries; the replica
    serves on)."""
    error = as_domain_error(exc)
    return isinstance(error, Unavailable) and error.reason not in ONE_CALLS_FATE


class Backoff:
    """Bounded exponential backoff with jitter: 0.1 s doubling to at most 2 s."""

    def __init__(self, first: float = 0.1, most: float = 2.0) -> None:
        self.first = first
        self.most = most
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def delay(self) -> float:
        current = self._next
        self._next = min(self.most, current * 2)
        return current * random.uniform(0.8, 1.2)


def translate(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 (a cache)
    """The repository's ``?`` placeholders as psycopg's ``%s`` (and ``%`` escaped)."""
    query = cache.get(sql)
    if query is None:
        query = cache[sql] = sql.replace("%", "%%").replace("?", "%s")
    return query


class Cursor:
    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()


class PgConnection:
    """Adapts psycopg to the repository's ``execute(sql with ?, params)``."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return Cursor(self._conn.execute(translate(sql), list(params)))


#: The reads' session: a read waits at most this long for a lock, and runs at most this
#: long, since the event loop waits with it. Reads wait for no row lock, only for a
#: table's ACCESS EXCLUSIVE one (VACUUM FULL, CLUSTER, most ALTER TABLE, LOCK TABLE),
#: which is held for as long as the maintenance takes.
READS = "-c lock_timeout=50ms -c statement_timeout=2s"
#: The pool's sessions (writes, in threads): a write waits at most this long for a lock.
#: Row locks and the append lock are held for a commit's few milliseconds; a table lock
#: for as long as the maintenance takes, and every write behind it held a pooled
#: session, so that writes to other tables found none free.
WRITES = "-c lock_timeout=1s"
#: Work that met a locked table is refused at once this long (seconds) before it is tried
#: again: otherwise each caller's read would hold the loop (each write, a pooled session)
#: for the whole wait, one after another, and under load the server would serve nothing
#: else. A statement that ran too long is not held back: its cost is the parameters',
#: and one caller's slow listing must not get the statement refused for everyone else.
HOLD_LOCKED = 1.0


class HoldBack:
    """Work (a read's statement, a write's unit of work) that ran into a locked table is
    refused at once for a while; all other work goes on. Used on the event loop only."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._held: dict[Hashable, tuple[float, Unavailable]] = {}

    def check(self, key: Hashable) -> None:
        held = self._held.get(key)
        if held is not None and time.monotonic() < held[0]:
            held_back = held[1]  # a fresh traceback
            raise Unavailable(held_back.message, reason=held_back.reason, detail=held_back.detail)

    def failed(self, key: Hashable, error: KeyturnError, statement: str = "") -> None:
        if error.reason != "STORE_LOCKED":
            return
        now = time.monotonic()
        self._held = {k: h for k, h in self._held.items() if h[0] > now}
        if not self._held:
            log.warning(
                f"{self._what} wait on the database: what met it is refused for now, the "
                "rest is served",
                extra={"category": "error", "problem": error.message, "statement": statement},
            )
        self._held[key] = (
            now + HOLD_LOCKED,
            Unavailable(error.message, reason=error.reason, detail=error.detail),
        )

    def served(self, key: Hashable) -> None:
        if self._held.pop(key, None) is not None and not self._held:
            log.warning(f"{self._what} are served again", extra={"category": "error"})

    def __bool__(self) -> bool:
        return bool(self._held)


class ReadConnection:
    """The connection that serves reads on the event loop, replaced when it breaks.

    A read fails at once with UNAVAILABLE while ``problem()`` says the database is away,
    or while a broken connection is being replaced (in a thread, with backoff, so the
    loop never waits for a connect); ``repaired`` is called once a new one is in place.
    A statement that ran into a locked table is held back (HoldBack): refused at once for
    a while, every other statement served.
    """

    def __init__(self, url: str, problem: Callable[[], str], repaired: Callable[[], None]) -> None:
        self._url = url
        self._problem = problem
        self._repaired = repaired
        self._conn: psycopg.Connection[Any] | None = connect(url, "reads", READS)
        self._swap = threading.Lock()
        self._repairer: threading.Thread | None = None
        self._closing = threading.Event()
        self._held = HoldBack("reads")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        problem = self._problem()
        if problem:
            raise unreachable(problem)
        conn = self._conn
        if conn is None:
            raise Unavailable(
                "the connection to the database is being re-established; retry",
                reason="STORE_UNAVAILABLE",
            )
        if self._held:
            self._held.check(sql)
        try:
            cursor = Cursor(conn.execute(translate(sql), list(params)))
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self.lost(conn)
            error = as_domain_error(exc)
            if error is None:
                raise
            self._held.failed(sql, error, sql[:120])
            raise error from None
        if self._held:
            self._held.served(sql)
        return cursor

    def lost(self, conn: psycopg.Connection[Any]) -> None:
        """``conn`` broke: replace it in the background."""
        with self._swap:
            if conn is not self._conn:
                return
            self._conn = None
            if self._repairer is None or not self._repairer.is_alive():
                self._repairer = threading.Thread(
                    target=self._repair, name="keyturn-pg-reads", daemon=True
                )
                self._repairer.start()
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def verify(self) -> None:
        """(Off the event loop, while reads are refused:) make sure there is a working
        connection, replacing it now if there is not."""
        conn = self._conn
        if conn is not None:
            try:
                conn.execute("")
                return
            except psycopg.Error:
                self.lost(conn)
        self._replace()

    def _replace(self) -> bool:
        """Connect, unless another thread did meanwhile; whether there is one now."""
        if self._conn is not None:
            return True
        try:
            fresh = connect(self._url, "reads", READS)
        except psycopg.Error as exc:
            log.debug("reconnecting reads failed: %s", describe(exc))
            return False
        with self._swap:
            placed = self._conn is None and not self._closing.is_set()
            if placed:
                self._conn = fresh
        if placed:
            self._repaired()
        else:
            fresh.close()
        return True

    def _repair(self) -> None:
        backoff = Backoff()
        while not self._closing.is_set() and not self._replace():
            self._closing.wait(backoff.delay())

    def close(self) -> None:
        self._closing.set()
        with self._swap:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
