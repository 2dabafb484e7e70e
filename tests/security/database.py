"""The database-file writer of the threat model: someone who can change the store's rows
with plain SQL (sqlite3 on the file, or a PostgreSQL session) but does not hold
MASTER_KEY. The server is stopped around each edit, so that nothing it caches hides one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from tests.harness import Harness


def run_sql(server: Harness, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run one statement as the attacker, on the stopped server's database; its rows."""
    assert server.app is None, "stop the server before editing its database"
    return query(server, sql, params)


def query(server: Harness, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run one statement on the database, stopped or not (a read while it runs)."""
    url = server.settings.store
    if url:
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            cursor = conn.execute(
                sql.replace("%", "%%").replace("?", "%s"),  # type: ignore[arg-type]
                list(params),
            )
            return list(cursor.fetchall()) if cursor.description else []
    conn = sqlite3.connect(server.data_dir / "keyturn.db")
    conn.row_factory = sqlite3.Row
    try:
        with conn:
            found = conn.execute(sql, params).fetchall()
        return [dict(row) for row in found]
    finally:
        conn.close()


async def tamper(server: Harness, *statements: tuple[str, Sequence[Any]]) -> None:
    """Stop the server, run the statements, start it again."""
    await server.stop()
    for sql, params in statements:
        run_sql(server, sql, params)
    await server.start()
