"""Electing the replica that runs the scheduler, on PostgreSQL.

Each replica keeps one connection for this, in a thread of its own, and blocks on a
session advisory lock (``pg_advisory_lock``). PostgreSQL grants it to one waiter the
moment its holder's session ends, whether the holder exited, was killed (``kill -9``
closes its socket; the server sees it at once), lost its connection or had its session
terminated; keepalives bound how long a vanished host keeps it. The replica that gets
the lock takes the lease over in the same session (the next epoch: domain/lease.py) and
wakes its scheduler at once, so a failover takes about as long as the old session takes
to end, not a polling interval.

The holder then waits on its connection, which wakes it the instant the session ends,
and re-reads the lease every second. When either says it no longer leads, it stops
acting. It may be told last (a partition): the epoch in every scheduled write fences it
out before the new holder acts, which is what makes two replicas acting at once
impossible rather than unlikely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from keyturn_server.clock import Clock
from keyturn_server.domain.lease import Lease
from keyturn_server.store.postgres.connections import Backoff, PgConnection, connect, describe
from keyturn_server.store.sql import SqlRepository

log = logging.getLogger("keyturn.scheduler")

LEADER_LOCK = 0x6B74_0002  # the scheduler's leadership (session advisory lock)
#: How often the holder re-reads the lease (it is woken at once if its session ends).
VERIFY_EVERY = 1.0
#: How often it looks up from waiting on its session (to let go when stopping).
TICK = 0.2


class PgLeadership:
    def __init__(self, url: str, holder: str, clock: Clock) -> None:
        self._url = url
        self.holder = holder
        self._clock = clock
        self._lease: Lease | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._closing = threading.Event()
        self._let_go = threading.Event()
        self._tried = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the Leadership protocol ---------------------------------------------------------

    def lease(self) -> Lease | None:
        return self._lease

    def lost(self, lease: Lease) -> None:
        if self._lease == lease:
            self._set(None)
            self._let_go.set()

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        """Start electing; return once the first try is decided (a replica alone leads
        by then), or after a few seconds if the database does not answer."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="keyturn-pg-leader", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._tried.wait, 5)

    async def stop(self) -> None:
        """Let go of the lease: the session ends, and another replica takes over at once."""
        self._closing.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=2)  # a wait for the lock ends now
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        self._set(None)

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff()
        while not self._closing.is_set():
            try:
                with connect(self._url, "leader") as conn:
                    self._conn = conn
                    backoff.reset()
                    if not self._try_lock(conn):
                        self._tried.set()
                        conn.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
                    if self._closing.is_set():
                        return
                    lease = self._take(conn)
                    self._tried.set()
                    self._hold(conn, lease)
            except psycopg.Error as exc:
                if self._closing.is_set():
                    return
                if self._lease is not None:
                    log.warning(
                        "lost the scheduler lock's connection; stopped scheduling",
                        extra={"category": "error", "problem": describe(exc)},
                    )
                self._set(None)
                self._closing.wait(backoff.delay())
            finally:
                self._conn = None
                self._set(None)

    @staticmethod
    def _try_lock(conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (LEADER_LOCK,)).fetchone()
        return bool(row and row["got"])

    def _take(self, conn: psycopg.Connection[Any]) -> Lease:
        with conn.transaction():
            repo = SqlRepository(PgConnection(conn), concurrent_writers=True, lock_appends=_none)
            lease = repo.take_scheduler_lease(self.holder, self._clock.now())
        log.info(
            "this replica leads the scheduler",
            extra={"category": "app", "epoch": lease.epoch, "holder": self.holder},
        )
        self._let_go.clear()
        self._set(lease)
        return lease

    def _hold(self, conn: psycopg.Connection[Any], lease: Lease) -> None:
        """Wait while ``lease`` holds; return to let go of it (the caller's ``with``
        closes the session, which releases the lock)."""
        repo = SqlRepository(PgConnection(conn))
        verified = time.monotonic()
        while not self._closing.is_set() and not self._let_go.is_set():
            for _ in conn.notifies(timeout=TICK, stop_after=1):
                pass
            if time.monotonic() - verified < VERIFY_EVERY:
                continue
            verified = time.monotonic()
            stored = repo.scheduler_lease()
            if stored is None or stored.epoch != lease.epoch:
                log.warning(
                    "the scheduler lease was taken over; stopped scheduling",
                    extra={"category": "error", "epoch": lease.epoch},
                )
                return

    def _set(self, lease: Lease | None) -> None:
        if lease == self._lease:
            return
        self._lease = lease
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for callback in self._callbacks:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(callback)


def _none() -> None:
    """Appends need no lock in the takeover: it appends nothing."""
