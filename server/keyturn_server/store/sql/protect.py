"""Giving every existing row its MAC: once, when a data directory made before row MACs
(schema 1) is first opened with its master key (bootstrap.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keyturn_server.store import rows
from keyturn_server.store.integrity import (
    CONFIG_COLUMNS,
    EVENT_COLUMNS,
    KEY_COLUMNS,
    TOKEN_COLUMNS,
    VERSION_COLUMNS,
    columns_of,
    handle_fields,
    secret_fields,
)
from keyturn_server.store.rows import Row
from keyturn_server.store.sql.statements import SqlBase

BATCH = 1000

#: table -> (primary key columns, what its MAC covers, read off a stored row)
_TABLES: dict[str, tuple[tuple[str, ...], Callable[[Row], tuple[Any, ...]]]] = {
    "keys": (("id",), lambda r: columns_of(r, KEY_COLUMNS)),
    "key_versions": (("key_id", "version"), lambda r: columns_of(r, VERSION_COLUMNS)),
    "handles": (("id",), lambda r: handle_fields(rows.handle_from_row(r))),
    "handle_secrets": (("digest",), lambda r: secret_fields(rows.secret_from_row(r))),
    "access_tokens": (("name",), lambda r: columns_of(r, TOKEN_COLUMNS)),
    "config": (("revision",), lambda r: columns_of(r, CONFIG_COLUMNS)),
    "events": (("sequence",), lambda r: columns_of(r, EVENT_COLUMNS)),
}


class ProtectSql(SqlBase):
    def tag_every_row(self) -> int:
        """Compute the MAC of every row of every protected table, as it stands now;
        the number of rows tagged."""
        tagged = 0
        for table, (keys, fields) in _TABLES.items():
            order = ", ".join(keys)
            after: tuple[Any, ...] | None = None
            while True:
                where = ""
                if after is not None:
                    where = f" WHERE ({order}) > ({', '.join('?' for _ in keys)})"
                found = self._all(
                    f"SELECT * FROM {table}{where} ORDER BY {order} LIMIT ?",
                    [*(after or ()), BATCH],
                )
                for row in found:
                    mac = self._integrity.tag(table, fields(row))
                    match = " AND ".join(f"{k} = ?" for k in keys)
                    self._run(
                        f"UPDATE {table} SET mac = ? WHERE {match}", [mac, *(row[k] for k in keys)]
                    )
                tagged += len(found)
                if len(found) < BATCH:
                    break
                after = tuple(found[-1][k] for k in keys)
        return tagged
