"""The append lock: one transaction at a time appends events and audit entries, so that
sequences commit in order and the audit chain has one head.

It is a transaction-scoped advisory lock held by Keyturn's own transactions only, each
from its first append to its commit. A wait for it past the writes' lock timeout (1 s)
used to end the call as STORE_LOCKED, "a table this call needs is locked (VACUUM FULL,
CLUSTER...)", sending the on-call after maintenance nobody ran, in two cases that need
different answers:

- a queue of commits (many replicas writing at once, a slow disk): the lock changes
  hands all the time, and waiting on is what serves the call. A write waits in rounds of
  the lock timeout while its holders work, for at most APPEND_WAIT, then is refused as
  the store being behind (RESOURCE_EXHAUSTED, STORE_BEHIND, retry in a second). Past the
  first round, at most a quarter of the commit threads wait on; the others' writes are
  refused so at once, and the threads stay free for writes that append nothing;
- a holder idle in its transaction (a replica paused mid-transaction by SIGSTOP or its
  VM): waiting serves nothing and holds a pooled session. The write is refused
  (UNAVAILABLE, STORE_LOCKED: the unit is held back for a second, as for a locked
  table) with the holder named; PostgreSQL ends an idle holder's session after
  idle_in_transaction_session_timeout (5 s for Keyturn's sessions: store.py).

The uncontended path costs what it did: one try that does not wait.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg

from keyturn_server.domain.errors import ResourceExhausted, Unavailable

APPEND_LOCK = 0x6B74_0001
#: Seconds a write waits at most for the append lock while it changes hands.
APPEND_WAIT = 5.0
#: A holder idle in its transaction this long (seconds) has stalled.
STALLED = 1.0

#: The session holding the append lock: who, how long it has been in its state, which.
_HOLDER = """
SELECT a.pid, a.application_name, a.state, a.xact_start,
       EXTRACT(EPOCH FROM clock_timestamp() - a.state_change)::float8 AS still
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
"""


class AppendLock:
    """Takes the append lock for one store's transactions (see above)."""

    def __init__(self, commit_threads: int) -> None:
        #: Transactions that wait past the first lock timeout, at most: each holds a
        #: commit thread and a pooled session, which the writes that append nothing
        #: (validations) need too, and the rows it locked. Measured, behind a holder
        #: working for 4 s: with every thread waiting on, validations queued behind 18
        #: GenerateKey calls answered in 3.9 s; with a quarter of them, 2.9-3.0 s; with
        #: every wait ended at the first timeout (before), 2.1 s.
        self._waiting_on = threading.BoundedSemaphore(max(1, commit_threads // 4))

    def take(self, conn: psycopg.Connection[Any]) -> None:
        """Take the lock in the transaction open on ``conn``."""
        got = conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS v", (APPEND_LOCK,)).fetchone()
        if got and got["v"]:
            return
        started = time.monotonic()
        waiting_on = False
        try:
            while True:
                try:
                    with conn.transaction():  # a savepoint: a wait that times out leaves the unit
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
                    return
                except psycopg.errors.LockNotAvailable:
                    pass
                holder = conn.execute(_HOLDER, (APPEND_LOCK,)).fetchone()
                if holder is None:
                    continue  # released meanwhile
                if holder["state"] == "idle in transaction" and (holder["still"] or 0) >= STALLED:
                    raise _stalled(holder)
                # Working (a long batch, a slow commit), or one this role may not see.
                if not waiting_on:
                    waiting_on = self._waiting_on.acquire(blocking=False)
                if not waiting_on or time.monotonic() - started >= APPEND_WAIT:
                    raise _behind()
        finally:
            if waiting_on:
                self._waiting_on.release()


def _behind() -> ResourceExhausted:
    return ResourceExhausted(
        "the store is behind: event and audit appends are queued (many replicas writing at "
        "once, or a slow disk); nothing of this request was done: retry shortly",
        reason="STORE_BEHIND",
        retry_after=timedelta(seconds=1),
    )


def _stalled(holder: dict[str, Any]) -> Unavailable:
    state = holder["state"] or "unknown"
    return Unavailable(
        "the event log's append lock is held by a transaction that sits idle (pid "
        f"{holder['pid']}, {holder['application_name'] or 'no application name'}, "
        f"{state} for {holder['still'] or 0:.1f} s): a replica paused or stalled in the "
        "middle of a transaction; the database ends an idle one after its "
        "idle_in_transaction_session_timeout. Nothing of this request was done: retry",
        reason="STORE_LOCKED",
    )
