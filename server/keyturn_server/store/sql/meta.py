"""Named values, the configuration, and the sealed columns in SQL."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from keyturn_server.clock import from_micros, to_micros
from keyturn_server.domain.repositories.config import StoredConfig
from keyturn_server.domain.repositories.sealed import SealedKind, SealedValue
from keyturn_server.store.integrity import CONFIG_COLUMNS, columns_of, tampered
from keyturn_server.store.sql.statements import SqlBase

#: kind -> (table, primary key columns, sealed column, the record's id, the bound number)
_SEALED: dict[SealedKind, tuple[str, tuple[str, ...], str, str, str]] = {
    SealedKind.KEY_MATERIAL: (
        "key_versions",
        ("key_id", "version"),
        "material",
        "key_id",
        "version",
    ),
    SealedKind.PENDING_SUCCESSOR: (
        "handle_secrets",
        ("digest",),
        "sealed_token",
        "handle_id",
        "generation",
    ),
    # An event's seal is bound to the generation of the handle in its snapshot.
    SealedKind.DELIVERED_TOKEN: ("events", ("sequence",), "sealed_token", "subject_id", "snapshot"),
}


#: The latest time a server of this store reached (domain/time_floor.py), with its MAC.
CLOCK_FLOOR = "clock_floor"


class MetaSql(SqlBase):
    def get_meta(self, name: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE name = ?", (name,))
        return None if row is None else bytes(row["value"])

    def set_meta(self, name: str, value: bytes) -> None:
        self._run(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def claim_meta(self, name: str, value: bytes) -> bool:
        row = self._one(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING "
            "RETURNING name",
            (name, value),
        )
        return row is not None

    def lock_meta(self, name: str) -> bool:
        if not self._for_update:
            return True  # one writer at a time already
        sql = f"SELECT name FROM meta WHERE name = ?{self._for_update} SKIP LOCKED"
        if self._one(sql, (name,)) is not None:
            return True
        return self._one("SELECT name FROM meta WHERE name = ?", (name,)) is None

    def meta_names(self, prefix: str) -> list[str]:
        found = self._all("SELECT name FROM meta WHERE name LIKE ? ORDER BY name", (prefix + "%",))
        return [r["name"] for r in found]

    def delete_meta(self, name: str) -> None:
        self._run("DELETE FROM meta WHERE name = ?", (name,))

    def clock_floor(self) -> datetime | None:
        raw = self.get_meta(CLOCK_FLOOR)
        if raw is None:
            return None
        text, _, mac = raw.decode(errors="replace").partition(":")
        try:
            micros, tag = int(text), bytes.fromhex(mac)
        except ValueError:
            micros, tag = 0, None
        if not self._integrity.intact("meta", (CLOCK_FLOOR, micros), tag, CLOCK_FLOOR):
            return None  # reported; the next raise writes a good one
        return from_micros(micros)

    def raise_clock_floor(self, now: datetime) -> None:
        current = self.clock_floor()
        if current is not None and current >= now:
            return
        micros = to_micros(now)
        tag = self._integrity.tag("meta", (CLOCK_FLOOR, micros))
        self.set_meta(CLOCK_FLOOR, f"{micros}:{tag.hex()}".encode())

    # --- configuration -----------------------------------------------------------------

    def latest_config(self) -> StoredConfig | None:
        """The newest revision; a tampered one is DATA_LOSS (policies grant and limit)."""
        row = self._one(
            "SELECT revision, body, update_time, updated_by, mac FROM config "
            "ORDER BY revision DESC LIMIT 1"
        )
        if row is None:
            return None
        record = f"revision {row['revision']}"
        if not self._integrity.intact(
            "config", columns_of(row, CONFIG_COLUMNS), row["mac"], record
        ):
            raise tampered("config", record)
        return StoredConfig(
            json.loads(row["body"]),
            row["revision"],
            from_micros(row["update_time"]),
            row["updated_by"],
        )

    def config_revision(self) -> int:
        row = self._one("SELECT MAX(revision) AS revision FROM config")
        return int(row["revision"] or 0) if row is not None else 0

    def put_config(self, config: StoredConfig) -> bool:
        row: dict[str, Any] = {
            "revision": config.revision,
            "body": json.dumps(config.body, sort_keys=True),
            "update_time": to_micros(config.update_time),
            "updated_by": config.updated_by,
        }
        mac = self._integrity.tag("config", columns_of(row, CONFIG_COLUMNS))
        # A concurrent writer of the same revision makes this wait for its commit, then
        # insert nothing: the loser learns it lost without an error.
        inserted = self._one(
            "INSERT INTO config (revision, body, update_time, updated_by, mac) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (revision) DO NOTHING RETURNING revision",
            (*row.values(), mac),
        )
        return inserted is not None

    # --- sealed values (master-key rotation walks them) ---------------------------------

    def sealed_after(
        self, kind: SealedKind, after: SealedValue | None, limit: int
    ) -> list[SealedValue]:
        table, keys, column, record, number = _SEALED[kind]
        columns = ", ".join(dict.fromkeys((*keys, record, number)))
        where = f"{column} IS NOT NULL"
        params: list[Any] = []
        if after is not None:
            where += f" AND ({', '.join(keys)}) > ({', '.join('?' for _ in keys)})"
            params.extend(after.position)
        found = self._all(
            f"SELECT {columns}, {column} AS blob FROM {table} WHERE {where} "
            f"ORDER BY {', '.join(keys)} LIMIT ?",
            [*params, limit],
        )
        return [
            SealedValue(
                kind,
                str(row[record]),
                _bound_number(kind, row[number]),
                bytes(row["blob"]),
                tuple(row[k] for k in keys),
            )
            for row in found
        ]

    def replace_sealed(self, value: SealedValue, blob: bytes) -> None:
        table, keys, column, _, _ = _SEALED[value.kind]
        where = " AND ".join(f"{k} = ?" for k in keys)
        self._run(f"UPDATE {table} SET {column} = ? WHERE {where}", [blob, *value.position])


def _bound_number(kind: SealedKind, stored: Any) -> int:
    if kind is SealedKind.DELIVERED_TOKEN:
        return int(json.loads(str(stored))["handle"]["generation"])
    return int(stored)
