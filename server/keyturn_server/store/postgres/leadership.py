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

A holder that is alive to PostgreSQL but not to its work (a paused VM, SIGSTOP, an event
loop stuck in a call) would keep the lock for ever, and nothing would be scheduled. So
the lease has a time to live, as Consul sessions and Kubernetes leases do: the holder's
once-a-second read of the lease is its sign of life, and it gives none while its event
loop has not run for half the TTL. Followers wait for the lock one second at a time
(``lock_timeout``) and between waits look at the holder's session: when it has run
nothing for longer than the TTL (``pg_stat_activity.state_change``, on the database's
own clock, so the replicas' clocks do not matter), they end it with
``pg_terminate_backend`` and the lock goes to one of them. The old holder, if it ever
wakes, finds its session gone and its epoch superseded. Ending another replica's session
needs the same database role (or ``pg_signal_backend``); without it they say so once and
leave the holder be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import psycopg.errors

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
#: Followers wait for the lock this long at a time, then look at the holder.
WATCH_EVERY = 1.0
#: How often the event loop says it runs (the holder's sign of life depends on it).
BEAT = 0.5
#: The default time to live of a silent holder's lease (--scheduler-lease-ttl).
DEFAULT_LEASE_TTL = timedelta(seconds=15)

#: The session holding the scheduler's lock in this database, and how long it has run
#: nothing (NULL when this role may not see it).
_HOLDER = """
SELECT a.pid, EXTRACT(EPOCH FROM clock_timestamp() - a.state_change)::float8 AS silent
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
"""


class PgLeadership:
    def __init__(
        self, url: str, holder: str, clock: Clock, ttl: timedelta = DEFAULT_LEASE_TTL
    ) -> None:
        self._url = url
        self.holder = holder
        self._clock = clock
        #: Seconds; 0: a silent holder keeps the lease.
        self._ttl = ttl.total_seconds()
        #: When the event loop last ran (time.monotonic), for the holder's sign of life.
        self._alive = time.monotonic()
        self._beating: asyncio.TimerHandle | None = None
        self._cannot_end = False
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
        self._beat()
        self._thread = threading.Thread(target=self._run, name="keyturn-pg-leader", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._tried.wait, 5)

    async def stop(self) -> None:
        """Let go of the lease: the session ends, and another replica takes over at once."""
        self._closing.set()
        if self._beating is not None:
            self._beating.cancel()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=2)  # a wait for the lock ends now
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        self._set(None)

    def _beat(self) -> None:
        self._alive = time.monotonic()
        assert self._loop is not None
        self._beating = self._loop.call_later(BEAT, self._beat)

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
                        self._wait_for_lock(conn)
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

    def _wait_for_lock(self, conn: psycopg.Connection[Any]) -> None:
        """Block until this session holds the lock, ending a silent holder's session."""
        if not self._ttl:
            conn.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
            return
        wait = f"{int(WATCH_EVERY * 1000)}ms"
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (wait,))
        while not self._closing.is_set():
            try:
                conn.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK,))
                break
            except psycopg.errors.LockNotAvailable:
                self._end_silent_holder(conn)
        conn.execute("SELECT set_config('lock_timeout', '0', false)")

    def _end_silent_holder(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute(_HOLDER, (LEADER_LOCK,)).fetchone()
        if row is None or row["silent"] is None or row["silent"] <= self._ttl:
            if row is not None and row["silent"] is None and not self._cannot_end:
                self._cannot_end = True
                log.warning(
                    "cannot see the scheduler holder's session (pg_stat_activity): a "
                    "frozen holder would keep the scheduler; give every replica the same "
                    "database role",
                    extra={"category": "error"},
                )
            return
        stored = SqlRepository(PgConnection(conn)).scheduler_lease()
        try:
            ended = conn.execute(
                "SELECT pg_terminate_backend(%s) AS ended", (row["pid"],)
            ).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            if not self._cannot_end:
                self._cannot_end = True
                log.warning(
                    "the scheduler holder is silent but this replica may not end its "
                    "session; give every replica the same database role",
                    extra={"category": "error", "silent_s": round(row["silent"], 1)},
                )
            return
        if ended and ended["ended"]:
            log.warning(
                "the scheduler holder showed no sign of life for longer than the lease's "
                "time to live: ended its session to take over",
                extra={
                    "category": "error",
                    "holder": stored.holder if stored else "",
                    "epoch": stored.epoch if stored else 0,
                    "silent_s": round(row["silent"], 1),
                    "ttl_s": self._ttl,
                },
            )

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
            now = time.monotonic()
            if self._ttl and now - self._alive > self._ttl / 2:
                # The event loop has not run: reading the lease would pass this replica
                # off as alive, and let it keep a scheduler it cannot run.
                continue
            verified = now
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
