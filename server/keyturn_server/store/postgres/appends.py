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
  the store being behind (RESOURCE_EXHAUSTED, STORE_BEHIND, retry in a second);
- a holder idle in its transaction (a replica paused mid-transaction by SIGSTOP or its
  VM): waiting serves nothing and holds a pooled session. The write is refused
  (UNAVAILABLE, STORE_LOCKED: the unit is held back for a second, as for a locked
  table) with the holder named; PostgreSQL ends an idle holder's session after
  idle_in_transaction_session_timeout (5 s for Keyturn's sessions: store.py).

The uncontended path costs what it did: one try that does not wait.
"""

from __future__ import annotations

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


def take_append_lock(conn: psycopg.Connection[Any]) -> None:
    """Take the append lock in the transaction open on ``conn`` (see above)."""
    row = conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS got", (APPEND_LOCK,)).fetchone()
    if row and row["got"]:
        return
    started = time.monotonic()
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
        # Working (a long batch, a slow commit), or one this role may not see: wait on.
        if time.monotonic() - started >= APPEND_WAIT:
            raise ResourceExhausted(
                f"the store is behind: event and audit appends queued for over {APPEND_WAIT:.0f} "
                "s (many replicas writing at once, or a slow disk); nothing of this request "
                "was done: retry shortly",
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
