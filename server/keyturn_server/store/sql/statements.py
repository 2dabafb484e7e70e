"""What every part of the SQL repository shares: the connection it runs on, what the
backend can do, and statement builders.

Statements use ``?`` placeholders; the PostgreSQL connection adapter rewrites them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from keyturn_server.clock import to_micros
from keyturn_server.domain.paging import Cursor, Listing
from keyturn_server.store.integrity import RowIntegrity

#: Parameters per ``IN (...)`` list: well within both SQLite's and PostgreSQL's limits.
IN_LIMIT = 500


class Cursorlike(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the repository uses; rows support ``row["col"]``."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursorlike: ...


class SqlBase:
    """One connection, and how the backend shares it with other writers.

    ``concurrent_writers`` is the capability that decides locking. SQLite runs one unit of
    work at a time on its single writer, so what a unit reads stays as it read it. On
    PostgreSQL other transactions (replicas, worker threads) write at the same time:
    rows that a rule reads and then changes are locked FOR UPDATE, and event and audit
    appends first call ``lock_appends`` so that sequences commit in order and the audit
    chain keeps one head.

    ``integrity`` tags and checks the rows that grant rights (store/integrity.py); the
    store shares one between all its connections.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        integrity: RowIntegrity | None = None,
        concurrent_writers: bool = False,
        lock_appends: Callable[[], None] | None = None,
    ) -> None:
        if concurrent_writers and lock_appends is None:
            raise ValueError("concurrent writers need a lock that serialises appends")
        self._conn = conn
        self._integrity = integrity or RowIntegrity()
        self.concurrent_writers = concurrent_writers
        self._lock_appends = lock_appends
        #: Suffix of a SELECT whose rows the unit of work goes on to change.
        self._for_update = " FOR UPDATE" if concurrent_writers else ""

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, params).fetchone()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, params)

    def _lock_rows(self, table: str, ids: Sequence[str]) -> None:
        """Lock rows of ``table`` by id, in id order (only where writers are concurrent)."""
        if not self.concurrent_writers or not ids:
            return
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), IN_LIMIT):
            chunk = wanted[start : start + IN_LIMIT]
            marks = ", ".join("?" * len(chunk))
            self._all(f"SELECT id FROM {table} WHERE id IN ({marks}) ORDER BY id FOR UPDATE", chunk)

    def _count(self, table: str, where: Where) -> int:
        return int(self._one(f"SELECT COUNT(*) AS n FROM {table}{where.sql()}", where.params)["n"])

    def _serialise_append(self) -> None:
        if self._lock_appends is not None:
            self._lock_appends()

    def _page(
        self,
        table: str,
        now: datetime,
        type_name: str,
        status_sql: str | None,
        owner: str,
        after: Cursor | None,
        limit: int,
        total: int | None,
    ) -> Listing[Any]:
        """Rows of ``table`` (keys or handles) matching the filters, by (create_time, id)
        after a cursor, with the total across pages (AIP-158): ``total`` when given, else
        counted."""
        where = Where()
        if type_name:
            where.add("type = ?", type_name)
        if owner:
            where.add("owner = ?", owner)
        if status_sql is not None:
            where.add_named_now(status_sql, to_micros(now))
        if total is None:
            total = self._count(table, where)
        if after is not None:
            where.add(
                "(create_time > ? OR (create_time = ? AND id > ?))",
                after.create_time,
                after.create_time,
                after.id,
            )
        found = self._all(
            f"SELECT * FROM {table}{where.sql()} ORDER BY create_time, id LIMIT ?",
            [*where.params, limit + 1],
        )
        return Listing(found[:limit], total, len(found) > limit)


@dataclass
class Where:
    """A WHERE clause built from optional filters."""

    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def add_named_now(self, clause: str, now: int) -> None:
        """A clause that says ``:now`` (a computed status) any number of times."""
        count = clause.count(":now")
        self.clauses.append(clause.replace(":now", "?"))
        self.params.extend([now] * count)

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


def insert(table: str, row: dict[str, Any]) -> tuple[str, list[Any]]:
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    return f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values())


def update(table: str, row: dict[str, Any], key: dict[str, Any]) -> tuple[str, list[Any]]:
    """UPDATE ``table`` SET the columns of ``row`` WHERE the columns of ``key`` match."""
    sets = ", ".join(f"{c} = ?" for c in row)
    where = " AND ".join(f"{c} = ?" for c in key)
    return f"UPDATE {table} SET {sets} WHERE {where}", [*row.values(), *key.values()]


def update_row(table: str, row: dict[str, Any], key: Sequence[str]) -> tuple[str, list[Any]]:
    """UPDATE every column of ``row`` but its ``key`` columns, which name the row."""
    return update(table, {c: v for c, v in row.items() if c not in key}, {c: row[c] for c in key})
