"""Destroyed material leaves PostgreSQL's table files, not only the row.

Destroying a key version's material sets its column to NULL. PostgreSQL never overwrites
a row in place: the versions written before (every nonce reservation and state change
wrote the whole row again, sealed material included) stay in ``key_versions``' pages as
dead tuples until VACUUM, and a plain VACUUM only marks their space free: the bytes stay
in the page (measured on PostgreSQL 15: the destroyed version's sealed material was in
the table's page before and after ``VACUUM``). A copy of the database's files, with
MASTER_KEY, opened material Keyturn said was destroyed.

So after a commit that destroyed material, the table is rewritten (``VACUUM FULL``,
outside any transaction, on a connection of its own): the new files hold only live rows,
and the old ones are removed. The rewrite holds the table's ACCESS EXCLUSIVE lock for its
duration (about 10 ms per MB of the table here: 35-90 ms for 12,000 versions), and a read
of a key that waits past its own 50 ms for it is refused (STORE_LOCKED, retryable) and
its statement held back for a second on that replica: with 30,000 versions (8 MB), a
loop of Encrypt calls saw about a second of refusals. So it is run

- only when material was destroyed, and at most once per MIN_INTERVAL (destructions that
  come meanwhile share the next run), or once per SLOW_INTERVAL after a rewrite that took
  longer than reads wait (said once in the log): on a large table, destroyed material
  stays in the pages for up to an hour, and the cost is one second of retries an hour;
- with a lock wait (LOCK_WAIT) shorter than the reads' own, so that the queue it forms
  while it waits for a busy table cannot make the other replicas' reads time out; it is
  tried again later, backing off to MOST_DELAY;
- only once no session holds a snapshot older than the destruction: a rewrite keeps
  every row version such a snapshot may still read. Until then it is tried again.

Several replicas may run it: their rewrites take turns on the table's lock. A role that
does not own the table cannot rewrite it (PostgreSQL skips it with a warning): that is
retried, and logged after WARN_AFTER, like a busy table. Not reached:
the database's write-ahead log and its archive (a base backup or PITR keeps them), which
recycles segments after checkpoints, and blocks the filesystem keeps after a file is
removed (an encrypted volume covers those).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psycopg

from keyturn_server.store.postgres.connections import Backoff, connect, describe

log = logging.getLogger("keyturn.store")

#: How long one try waits for the table's lock (under READS' 50 ms).
LOCK_WAIT = "20ms"
#: Seconds between rewrites, at least.
MIN_INTERVAL = 10.0
#: ...and after one that took longer than QUIET (seconds): reads of keys noticed it.
SLOW_INTERVAL = 3600.0
QUIET = 0.05
#: Seconds between tries at most, while something holds the table or an older snapshot.
MOST_DELAY = 30.0
#: Seconds of failed tries before the log says what holds the rewrite back.
WARN_AFTER = 60.0
#: Tables whose rows hold sealed material.
TABLES = ("key_versions",)

#: Sessions whose snapshot may still see a row version the destruction (xid %s) replaced.
_OLDER_SNAPSHOTS = """
SELECT count(*) AS n FROM pg_stat_activity
 WHERE pid <> pg_backend_pid() AND backend_xmin IS NOT NULL
   AND age(backend_xmin) >= age(%s::text::xid)
"""


class PgScrub:
    """Rewrites the tables that held destroyed material, retrying until it succeeds."""

    def __init__(self, url: str) -> None:
        self._url = url
        #: The newest destroying transaction's id not yet scrubbed (0: none).
        self._wanted = 0
        self._task: asyncio.Future[None] | None = None
        self._last = -SLOW_INTERVAL
        self._interval = MIN_INTERVAL
        self._said_slow = False
        #: Rewrites done (tests and metrics read it).
        self.done = 0

    def request(self, xid: int) -> None:
        """Material was destroyed by transaction ``xid``, just committed (on the loop)."""
        self._wanted = max(self._wanted, xid)
        if self._task is None:
            self._task = asyncio.ensure_future(self._scrub())

    async def _scrub(self) -> None:
        backoff = Backoff(first=1.0, most=MOST_DELAY)
        since = time.monotonic()
        warned = False
        try:
            while self._wanted:
                pause = self._last + self._interval - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                xid, self._wanted = self._wanted, 0
                began = time.monotonic()
                problem = await asyncio.to_thread(self._rewrite, xid)
                if not problem:
                    self._last = since = time.monotonic()
                    self._paced(self._last - began)
                    backoff.reset()
                    warned = False
                    continue
                if not warned and time.monotonic() - since > WARN_AFTER:
                    warned = True
                    log.warning(
                        "destroyed key material is still in the database's table pages: "
                        "the rewrite that removes it waits (retried)",
                        extra={"category": "error", "problem": problem},
                    )
                self._wanted = max(self._wanted, xid)
                await asyncio.sleep(backoff.delay())
        finally:
            self._task = None

    def _paced(self, took: float) -> None:
        """Space the rewrites by what the last one cost the readers."""
        self._interval = MIN_INTERVAL if took < QUIET else SLOW_INTERVAL
        if took >= QUIET and not self._said_slow:
            self._said_slow = True
            log.warning(
                f"rewriting key_versions to remove destroyed material took {took * 1000:.0f} "
                "ms, longer than a read of a key waits for it: calls that read keys meanwhile "
                "were refused (STORE_LOCKED, retryable) for about a second. Rewrites now run "
                f"at most every {SLOW_INTERVAL / 60:.0f} minutes",
                extra={"category": "app", "took_ms": round(took * 1000)},
            )

    def _rewrite(self, xid: int) -> str:
        """(A thread:) one try; what held it back ("" once the tables are rewritten)."""
        try:
            with connect(self._url, "scrub", f"-c lock_timeout={LOCK_WAIT}") as conn:
                # xid8 to xid: the 32-bit id age() compares; a destruction is never
                # two billion transactions old while it waits here.
                short = xid & 0xFFFF_FFFF
                row = conn.execute(_OLDER_SNAPSHOTS, (str(short),)).fetchone()
                if row is not None and row["n"]:
                    return f"{row['n']} session(s) hold a snapshot older than the destruction"
                skipped: list[str] = []
                # A role that does not own the table is told so in a warning, not an error.
                conn.add_notice_handler(
                    lambda notice: (
                        skipped.append(notice.message_primary or "")
                        if (notice.message_primary or "").startswith("skipping")
                        else None
                    )
                )
                for table in TABLES:
                    conn.execute(f"VACUUM (FULL) {table}")
                if skipped:
                    return "; ".join(skipped)
        except psycopg.Error as exc:
            return describe(exc)
        self.done += 1
        return ""

    async def close(self) -> None:
        """At the store's close: a try still pending is dropped (the next start of a
        server does not know of it; the next destruction rewrites the tables again)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await task
