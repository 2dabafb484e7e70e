"""Keys and their versions in SQL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from keyturn_server.clock import to_micros
from keyturn_server.domain.keys import Key, KeyStatus, KeyVersion
from keyturn_server.domain.paging import Cursor, Listing
from keyturn_server.store import rows
from keyturn_server.store.integrity import (
    HOLD_TABLE,
    KEY_COLUMNS,
    VERSION_COLUMNS,
    columns_of,
    hold_fields,
    tampered,
)
from keyturn_server.store.rows import Row
from keyturn_server.store.sql.statements import SqlBase, insert, update_row
from keyturn_server.store.sql.status import KEY_STATUS, status_case

_KEY_COUNTS = (
    f"SELECT type, {status_case(KEY_STATUS)} AS status, COUNT(*) AS n, "
    "CAST(COALESCE(SUM(usage_count), 0) AS BIGINT) AS usage, "
    "CAST(COALESCE(SUM(primary_version), 0) AS BIGINT) AS versions "
    "FROM keys GROUP BY 1, 2"
)


_VERSIONS = (
    "SELECT key_id, version, state, create_time, expire_time, destroy_time, public_pem, "
    "nonces_reserved, disabled_by, disabled_by_mac, mac FROM key_versions "
    "WHERE key_id = ? ORDER BY version"
)


class KeySql(SqlBase):
    #: Set once this transaction destroyed material: the SQLite store then erases it
    #: from its write-ahead log too (store/scrub.py).
    erased = False

    def get_key(self, key_id: str, for_update: bool = False) -> Key | None:
        """The key with every version; a tampered row of either is DATA_LOSS."""
        lock = self._for_update if for_update else ""
        row = self._one(f"SELECT * FROM keys WHERE id = ?{lock}", (key_id,))
        if row is None:
            return None
        key = self._authentic_key(row)
        if key is None:
            raise tampered("keys", key_id)
        return key

    def _authentic_key(self, row: Row) -> Key | None:
        """The key of a stored row, or None (reported) when it or a version is tampered."""
        key_id = row["id"]
        integrity = self._integrity
        if not integrity.intact(
            "keys", columns_of(row, KEY_COLUMNS), row["mac"], key_id, resource=key_id
        ):
            return None
        versions = []
        for found in self._all(_VERSIONS, (key_id,)):
            record = f"{key_id} version {found['version']}"
            fields = columns_of(found, VERSION_COLUMNS)
            if not integrity.intact("key_versions", fields, found["mac"], record, key_id):
                return None
            if found["disabled_by"] is not None and not integrity.intact(
                HOLD_TABLE, hold_fields(found), found["disabled_by_mac"], record, key_id
            ):
                return None
            versions.append(rows.version_from_row(found))
        return rows.key_from_row(row, tuple(versions))

    def _authentic_keys(self, found: list[Row]) -> list[Key]:
        return [k for r in found if (k := self._authentic_key(r)) is not None]

    def lock_keys(self, key_ids: Sequence[str]) -> None:
        self._lock_rows("keys", key_ids)

    def insert_key(self, key: Key) -> None:
        self._run(*insert("keys", self._tagged_key(key)))

    def update_key(self, key: Key) -> None:
        self._run(*update_row("keys", self._tagged_key(key), ("id",)))

    def _tagged_key(self, key: Key) -> dict[str, object]:
        row = rows.key_row(key)
        row["mac"] = self._integrity.tag("keys", columns_of(row, KEY_COLUMNS))
        return row

    def insert_version(self, version: KeyVersion, sealed_material: bytes) -> None:
        row = self._held(rows.version_row(version))
        row["nonces_reserved"] = 0
        row["mac"] = self._integrity.tag("key_versions", columns_of(row, VERSION_COLUMNS))
        row["material"] = sealed_material
        self._run(*insert("key_versions", row))

    def _held(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with the MAC of who holds it disabled, if anyone (HOLD_TABLE)."""
        held = row["disabled_by"] is not None
        row["disabled_by_mac"] = self._integrity.tag(HOLD_TABLE, hold_fields(row)) if held else None
        return row

    def update_version(self, version: KeyVersion) -> None:
        # The nonce reservation is the store's alone (reserve_nonces): kept as stored.
        stored = self._one(
            "SELECT nonces_reserved FROM key_versions WHERE key_id = ? AND version = ?",
            (version.key_id, version.version),
        )
        row = self._held(rows.version_row(version))
        row["nonces_reserved"] = stored["nonces_reserved"] if stored else 0
        row["mac"] = self._integrity.tag("key_versions", columns_of(row, VERSION_COLUMNS))
        del row["nonces_reserved"]
        self._run(*update_row("key_versions", row, ("key_id", "version")))

    def reserve_nonces(self, key_id: str, version: int, count: int, limit: int) -> int | None:
        """Reserve ``count`` more encryptions of a version's budget, durably; the total
        reserved after it, or None when it would pass ``limit`` (nothing is reserved)."""
        row = self._one(
            f"SELECT * FROM key_versions WHERE key_id = ? AND version = ?{self._for_update}",
            (key_id, version),
        )
        if row is None:
            return None
        record = f"{key_id} version {version}"
        self._integrity.require(
            "key_versions", columns_of(row, VERSION_COLUMNS), row["mac"], record, key_id
        )
        total = int(row["nonces_reserved"]) + count
        if total > limit:
            return None
        updated = {c: row[c] for c in VERSION_COLUMNS}
        updated["nonces_reserved"] = total
        mac = self._integrity.tag("key_versions", columns_of(updated, VERSION_COLUMNS))
        self._run(
            "UPDATE key_versions SET nonces_reserved = ?, mac = ? WHERE key_id = ? AND version = ?",
            (total, mac, key_id, version),
        )
        return total

    def destroy_material(self, key_id: str, version: int) -> None:
        self._run(
            "UPDATE key_versions SET material = NULL WHERE key_id = ? AND version = ?",
            (key_id, version),
        )
        self.erased = True

    def sealed_material(self, key_id: str, version: int) -> bytes | None:
        row = self._one(
            "SELECT material FROM key_versions WHERE key_id = ? AND version = ?",
            (key_id, version),
        )
        return None if row is None or row["material"] is None else bytes(row["material"])

    def add_key_usage(self, usage: Mapping[str, tuple[int, datetime]]) -> None:
        # In id order: replicas flushing the same keys at once lock them in one order.
        for key_id, (count, last) in sorted(usage.items()):
            self._run(
                "UPDATE keys SET usage_count = usage_count + ?, last_used_time = "
                "CASE WHEN last_used_time IS NULL OR last_used_time < ? THEN ? "
                "ELSE last_used_time END WHERE id = ?",
                (count, to_micros(last), to_micros(last), key_id),
            )

    def list_keys(
        self,
        now: datetime,
        type_name: str,
        status: KeyStatus | None,
        owner: str,
        after: Cursor | None,
        limit: int,
        total: int | None = None,
    ) -> Listing[Key]:
        status_sql = None if status is None else KEY_STATUS[status]
        found = self._page("keys", now, type_name, status_sql, owner, after, limit, total)
        return Listing(self._authentic_keys(found.items), found.total, found.more)

    def count_keys(self, owner: str) -> int:
        """Keys of ``owner`` that are not destroyed (kept in key_owners)."""
        row = self._one("SELECT held FROM key_owners WHERE owner = ?", (owner,))
        return 0 if row is None else int(row["held"])

    def claim_key_slot(self, owner: str, cap: int) -> bool:
        """Count one more key for ``owner`` unless it holds ``cap`` already. One statement
        that takes the owner's row lock: of two units racing for the last slot (replicas
        on PostgreSQL), the second re-reads the first's count once it commits."""
        return (
            self._one(
                "INSERT INTO key_owners (owner, held) VALUES (?, 1) ON CONFLICT (owner) "
                "DO UPDATE SET held = key_owners.held + 1 WHERE key_owners.held < ? "
                "RETURNING held",
                (owner, cap),
            )
            is not None
        )

    def release_key_slot(self, owner: str) -> None:
        """One key of ``owner`` is destroyed: it no longer counts."""
        self._run("UPDATE key_owners SET held = held - 1 WHERE owner = ? AND held > 0", (owner,))

    def key_counts(self, now: datetime) -> list[tuple[str, str, int, int, int]]:
        """(type, status, count, usage, versions) for every type and computed status."""
        n = to_micros(now)
        found = self._all(_KEY_COUNTS.replace(":now", "?"), [n] * _KEY_COUNTS.count(":now"))
        return [(r["type"], r["status"], r["n"], r["usage"], r["versions"]) for r in found]

    def active_key_deadlines(self) -> list[tuple[str, str, int, int | None]]:
        """(id, type, expire_time, next_rotation_time) of active keys, in microseconds."""
        found = self._all(
            "SELECT id, type, expire_time, next_rotation_time FROM keys WHERE state = 'ACTIVE'"
        )
        return [(r["id"], r["type"], r["expire_time"], r["next_rotation_time"]) for r in found]

    def keys_overdue(self, now: datetime) -> int:
        row = self._one(
            "SELECT COUNT(*) AS n FROM keys WHERE state = 'ACTIVE' AND next_rotation_time <= ?",
            (to_micros(now),),
        )
        return int(row["n"])

    def keys_in_warning(
        self, now: datetime, limit: int, after: tuple[int, str] | None, owner: str = ""
    ) -> list[Key]:
        """Active keys inside their warning window, by (warn_time, id) after a cursor;
        only ``owner``'s when given."""
        n = to_micros(now)
        t, i = after if after is not None else (-1, "")
        mine = " AND owner = ?" if owner else ""
        found = self._all(
            "SELECT * FROM keys WHERE state = 'ACTIVE' AND warn_time <= ? AND expire_time > ? "
            f"AND (warn_time > ? OR (warn_time = ? AND id > ?)){mine} ORDER BY warn_time, id "
            "LIMIT ?",
            (n, n, t, t, i, *((owner,) if owner else ()), limit),
        )
        return self._authentic_keys(found)
