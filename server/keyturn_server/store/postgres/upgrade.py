"""Upgrading the shared database's schema while older replicas still serve from it.

The first replica of a rolling upgrade migrates the schema. A migration's ALTER TABLE or
CREATE INDEX waits for the locks of every transaction on its table, and while it waits
PostgreSQL queues every later request for that table behind it: one long transaction
(a DBA's session left open, a report, a pg_dump for ALTER TABLE) made the migration wait
without end, the new replica's start hang without a word, and every write of the older
replicas to that table wait out their lock timeout and fail, the whole replica set down.

So each attempt waits at most ATTEMPT_LOCK_TIMEOUT for a lock (well under the writes'
own second, so the older replicas' calls only slow down), is rolled back whole when it
cannot have one, and is tried again after a pause, for at most MIGRATION_WAIT; the log
names the sessions in the way, and past the wait the start is refused with them and
nothing changed, as Flyway and golang-migrate bound their lock waits.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import psycopg

from keyturn_server.store.postgres.connections import translate
from keyturn_server.store.schema import going_back, migrations, not_upgraded, writers_from

log = logging.getLogger("keyturn.store")

MIGRATE_LOCK = 0x6B74_0003
#: How long one attempt waits for a table's lock (PostgreSQL's lock_timeout).
ATTEMPT_LOCK_TIMEOUT = "200ms"
#: Seconds between attempts: the queue behind a waiting attempt drains meanwhile.
RETRY_PAUSE = 1.0
#: Seconds the start goes on trying before it is refused.
MIGRATION_WAIT = 60.0

#: Sessions in transactions begun before an attempt that hold locks on this database's
#: tables: what the attempt waited for.
_HOLDERS = """
SELECT DISTINCT a.pid, a.application_name, a.state, a.xact_start, c.relname
  FROM pg_locks l
  JOIN pg_stat_activity a ON a.pid = l.pid
  JOIN pg_class c ON c.oid = l.relation
 WHERE l.granted AND l.pid <> pg_backend_pid()
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND c.relkind IN ('r', 'i') AND pg_table_is_visible(c.oid)
   AND a.xact_start < %s
 ORDER BY a.pid, c.relname
"""


class SchemaBusy(OSError):
    """The schema upgrade could not have the locks it needs within MIGRATION_WAIT."""


def migrate(conn: psycopg.Connection[Any], *, upgrade: bool = True) -> int:
    """Bring the schema to this server's latest version (others may run this at once);
    that version. ``upgrade=False`` (operator commands): an older schema is refused."""
    steps = migrations("postgres")
    latest = int(steps[-1][0])
    if not upgrade:
        current = _version(conn)
        if current < latest:
            raise OSError(
                f"the database has schema {current}, older than this keyturn command's "
                f"({latest}): " + not_upgraded("the replicas on it are")
                if current
                else "the database holds no Keyturn store: start a server on it first"
            )
    deadline = time.monotonic() + MIGRATION_WAIT
    said = False
    while True:
        started = _value(conn, "SELECT clock_timestamp() AS value")
        try:
            current = _attempt(conn, steps)
        except (psycopg.errors.LockNotAvailable, _Upgrading) as exc:
            in_the_way = (
                "another Keyturn server upgrading it"
                if isinstance(exc, _Upgrading)
                else _holders(conn, started) or "another transaction"
            )
            what = f"the database schema's upgrade to version {latest}"
            if time.monotonic() + RETRY_PAUSE > deadline:
                raise SchemaBusy(
                    f"{what} could not lock the tables it changes for {MIGRATION_WAIT:.0f} s: "
                    f"they are held by {in_the_way}. End those sessions (SELECT "
                    "pg_terminate_backend(pid)) or start again once they are done; nothing "
                    "was changed"
                ) from None
            if not said:
                said = True
                log.warning(
                    f"{what} waits for tables held by {in_the_way}; older replicas go on "
                    f"serving meanwhile; trying again for up to {MIGRATION_WAIT:.0f} s",
                    extra={"category": "app", "schema": latest},
                )
            time.sleep(RETRY_PAUSE)
            continue
        if current > latest and _writers_from(conn, latest) > latest:
            raise OSError(
                f"the database has schema {current}, newer than this server ({latest}): "
                + going_back(
                    "restore the database from a backup taken before the upgrade (pg_dump, "
                    "or a base backup)"
                )
            )
        return latest


def _attempt(conn: psycopg.Connection[Any], steps: list[tuple[int, str]]) -> int:
    """One try: the database's version before it (every step applied, or none)."""
    if not _value(conn, "SELECT pg_try_advisory_lock(%s) AS value", MIGRATE_LOCK):
        raise _Upgrading()
    conn.execute(f"SET lock_timeout = '{ATTEMPT_LOCK_TIMEOUT}'")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS keyturn_schema (version INTEGER NOT NULL)")
        current = int(_value(conn, "SELECT MAX(version) AS value FROM keyturn_schema") or 0)
        with conn.transaction():
            if not _value(conn, _HAS_WRITERS_FROM):
                # Each step's declaration (schema.writers_from), for older servers to read.
                conn.execute("ALTER TABLE keyturn_schema ADD COLUMN writers_from INTEGER")
            for version, sql in steps:
                if version > current:
                    conn.execute(sql)
                    conn.execute(
                        "INSERT INTO keyturn_schema (version, writers_from) VALUES (%s, %s)",
                        (version, writers_from(version, sql)),
                    )
        return current
    finally:
        conn.execute("RESET lock_timeout")
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))


_HAS_WRITERS_FROM = """
SELECT EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = current_schema() AND table_name = 'keyturn_schema'
                  AND column_name = 'writers_from') AS value
"""
#: The oldest schema whose servers every step after schema ? lets write (a step
#: recorded before steps declared it lets only its own schema's servers write).
WRITERS_FROM = """
SELECT MAX(COALESCE(writers_from, version)) AS value FROM keyturn_schema WHERE version > ?
"""


def _writers_from(conn: psycopg.Connection[Any], mine: int) -> int:
    """The oldest schema whose servers may write on the database as it is (0: any)."""
    return int(_value(conn, translate(WRITERS_FROM), mine) or 0)


class _Upgrading(Exception):
    """Another server holds the schema lock: it is upgrading the schema."""


def _version(conn: psycopg.Connection[Any]) -> int:
    """The database's schema version, without creating or locking anything."""
    if _value(conn, "SELECT to_regclass('keyturn_schema') IS NOT NULL AS value"):
        return int(_value(conn, "SELECT MAX(version) AS value FROM keyturn_schema") or 0)
    return 0


def _value(conn: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    """The one value (named ``value``) a query returns."""
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row["value"]


def _holders(conn: psycopg.Connection[Any], before: datetime) -> str:
    """The sessions in the way, as the log and the refusal name them."""
    rows = conn.execute(_HOLDERS, (before,)).fetchall()
    sessions: dict[int, dict[str, Any]] = {}
    for row in rows:
        session = sessions.setdefault(row["pid"], {**row, "tables": []})
        session["tables"].append(row["relname"])
    return "; ".join(
        f"pid {pid} ({s['application_name'] or 'no application name'}, {s['state']}, "
        f"in a transaction since {s['xact_start']:%Y-%m-%d %H:%M:%S %Z}, "
        f"on {', '.join(s['tables'])})"
        for pid, s in sessions.items()
    )
