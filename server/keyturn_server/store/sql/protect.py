"""Giving every existing row its MAC: once, when a data directory made before row MACs
(schema 1) is first opened with its master key (bootstrap.py), in units that commit as
they go, so that a start stopped half-way is gone on with, not begun again."""

from __future__ import annotations

import json
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
    def tag_rows(self, after: str, limit: int) -> tuple[int, str]:
        """Give up to about ``limit`` rows their MAC as they stand now, going on from
        ``after`` (where the previous call stopped; "" from the start), table by table in
        primary key order; how many, and where to go on from ("" once every row has its
        MAC). The position is opaque to the caller, which keeps it sealed (bootstrap.py)."""
        tables = list(_TABLES.items())
        index, last = _position(after)
        tagged = 0
        while index < len(tables) and tagged < limit:
            table, (keys, fields) = tables[index]
            order = ", ".join(keys)
            where = "" if last is None else f" WHERE ({order}) > ({', '.join('?' for _ in keys)})"
            wanted = min(BATCH, limit - tagged)
            found = self._all(
                f"SELECT * FROM {table}{where} ORDER BY {order} LIMIT ?", [*(last or ()), wanted]
            )
            match = " AND ".join(f"{k} = ?" for k in keys)
            for row in found:
                mac = self._integrity.tag(table, fields(row))
                self._run(
                    f"UPDATE {table} SET mac = ? WHERE {match}", [mac, *(row[k] for k in keys)]
                )
            tagged += len(found)
            if len(found) < wanted:
                index, last = index + 1, None
            else:
                last = tuple(found[-1][k] for k in keys)
        return tagged, "" if index >= len(tables) else _encode(index, last)


def _encode(index: int, last: tuple[Any, ...] | None) -> str:
    values = None if last is None else [_value(v) for v in last]
    return json.dumps([index, values])


def _value(value: Any) -> Any:
    return {"hex": bytes(value).hex()} if isinstance(value, bytes | memoryview) else value


def _position(text: str) -> tuple[int, tuple[Any, ...] | None]:
    if not text:
        return 0, None
    index, values = json.loads(text)
    if values is None:
        return int(index), None
    return int(index), tuple(bytes.fromhex(v["hex"]) if isinstance(v, dict) else v for v in values)
