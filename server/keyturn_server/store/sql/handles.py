"""Handles, their secrets and their anomalies in SQL."""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Sequence
from datetime import datetime

from keyturn_server.clock import from_micros, to_micros
from keyturn_server.domain.anomalies import Anomaly
from keyturn_server.domain.handles import Handle, HandleSecret, HandleStatus
from keyturn_server.domain.paging import Cursor, Listing
from keyturn_server.store import rows
from keyturn_server.store.integrity import handle_fields, secret_fields, tampered
from keyturn_server.store.rows import Row
from keyturn_server.store.sql.statements import IN_LIMIT, SqlBase, insert, update, update_row
from keyturn_server.store.sql.status import HANDLE_STATUS, status_case

_HANDLE_COUNTS = (
    f"SELECT type, {status_case(HANDLE_STATUS)} AS status, COUNT(*) AS n, "
    "CAST(COALESCE(SUM(usage_count), 0) AS BIGINT) AS usage, "
    "COALESCE(MAX(usage_count), 0) AS top "
    "FROM handles GROUP BY 1, 2"
)

#: The first key of the advisory locks that serialise issuing handles to one owner.
OWNER_LOCKS = 0x6B74

#: Handles that ended, as the index handles_ended (migration 4) has them: the scheduler
#: finds the oldest, and those past the retention, through it.
_ENDED = "state IN ('EXHAUSTED', 'EXPIRED', 'REVOKED')"
OLDEST_ENDED = f"SELECT MIN(expire_time) AS t FROM handles WHERE {_ENDED}"
ENDED_BEFORE = (
    f"SELECT id FROM handles WHERE {_ENDED} AND expire_time <= ? ORDER BY expire_time LIMIT ?"
)

#: The secrets and their handles by digest, each row's columns by position: the secret's
#: (rows.SECRET_COLUMNS), its MAC, the handle's MAC, the handle's (rows.HANDLE_COLUMNS).
_SECRETS_WITH_HANDLES = (
    "SELECT "
    + ", ".join(
        # Aliased: the secret's and the handle's columns share names (mac, generation,
        # create_time), and a PostgreSQL row is a dict, which would keep only one.
        [f"s.{c} AS s_{c}" for c in (*rows.SECRET_COLUMNS, "mac")]
        + ["h.mac AS h_mac"]
        + [f"h.{c}" for c in rows.HANDLE_COLUMNS]
    )
    + " FROM handle_secrets s JOIN handles h ON h.id = s.handle_id WHERE s.digest IN "
)
_SECRET_END = len(rows.SECRET_COLUMNS)
#: The fields a validation's use leaves alone (all but the counters it moves).
_settled_fields = operator.attrgetter(
    *(f.name for f in dataclasses.fields(Handle) if f.name not in rows.COUNTER_FIELDS)
)
_COUNT_USE = (
    "UPDATE handles SET "
    + ", ".join(f"{c} = ?" for c in (*rows.COUNTER_COLUMNS, "mac"))
    + " WHERE id = ?"
)
#: Where a row's handle part starts: the handle's MAC, then rows.HANDLE_COLUMNS.
_HANDLE_PART = _SECRET_END + 1
_HANDLE_START = _SECRET_END + 2
#: Where a row has the secret's digest, and the handle's id.
_DIGEST = rows.SECRET_COLUMNS.index("digest")
_HANDLE_ID = _HANDLE_START + rows.HANDLE_COLUMNS.index("id")


class HandleSql(SqlBase):
    def get_handle(self, handle_id: str, for_update: bool = False) -> Handle | None:
        """The handle; a tampered row is DATA_LOSS."""
        lock = self._for_update if for_update else ""
        row = self._one(f"SELECT * FROM handles WHERE id = ?{lock}", (handle_id,))
        if row is None:
            return None
        handle = self._authentic_handle(row)
        if handle is None:
            raise tampered("handles", handle_id)
        return handle

    def _authentic_handle(self, row: Row) -> Handle | None:
        """The handle of a stored row, or None (reported) when the row is tampered."""
        handle = rows.handle_from_row(row)
        return handle if self._intact_handle(handle, row["mac"]) else None

    def _intact_handle(self, handle: Handle, mac: object) -> bool:
        return self._integrity.intact(
            "handles", handle_fields(handle), mac, handle.id, resource=handle.id
        )

    def _authentic_handles(self, found: list[Row]) -> list[Handle]:
        return [h for r in found if (h := self._authentic_handle(r)) is not None]

    def _authentic_secret(self, secret: HandleSecret, mac: object) -> bool:
        return self._integrity.intact(
            "handle_secrets",
            secret_fields(secret),
            mac,
            _secret_record(secret),
            resource=secret.handle_id,
        )

    def secrets_with_handles(
        self, digests: Sequence[bytes]
    ) -> dict[bytes, tuple[HandleSecret, Handle]]:
        """The secrets with these digests and their handles, the handles locked (see
        :meth:`_lock_handles_of`). A pair with a tampered row is left out: the token
        validates as an unknown one."""
        return self._secrets_with_handles(digests, " FOR UPDATE")[0]

    def secrets_with_free_handles(
        self, digests: Sequence[bytes]
    ) -> tuple[dict[bytes, tuple[HandleSecret, Handle]], set[bytes]]:
        """The handles are locked SKIP LOCKED: the secrets of the handles skipped are
        read, and their digests returned apart, busy."""
        return self._secrets_with_handles(digests, " FOR UPDATE SKIP LOCKED")

    def _lock_handles_of(self, digests: list[bytes], locking: str) -> set[str]:
        """Lock the handles of these secrets, in id order (replicas locking overlapping
        sets cannot deadlock), in one statement; the ids locked.

        Locked first and read after: a statement that joined secrets to handles and
        locked the handles got, after waiting for a rotation's commit, the handle as
        rotated but the secret (a row it did not lock) as before; a current secret of an
        older generation is reuse, and the handle was revoked. A statement that starts
        once the locks are held reads both as committed."""
        found = self._all(
            "SELECT id FROM handles WHERE id IN (SELECT handle_id FROM handle_secrets "
            f"WHERE digest = ANY(?)) ORDER BY id{locking}",
            (digests,),
        )
        return {row["id"] for row in found}

    def _secrets_with_handles(
        self, digests: Sequence[bytes], locking: str
    ) -> tuple[dict[bytes, tuple[HandleSecret, Handle]], set[bytes]]:
        found: dict[bytes, tuple[HandleSecret, Handle]] = {}
        busy: set[bytes] = set()
        wanted = list(dict.fromkeys(digests))
        locked = self._lock_handles_of(wanted, locking) if self.concurrent_writers else None
        decoded = self._integrity.decoded
        for start in range(0, len(wanted), IN_LIMIT):
            chunk = wanted[start : start + IN_LIMIT]
            marks = ", ".join("?" * len(chunk))
            for row in self._all(f"{_SECRETS_WITH_HANDLES}({marks})", chunk):
                # By position: a name lookup in an SQLite row searches its columns.
                values = tuple(row.values()) if isinstance(row, dict) else tuple(row)
                secret_values, handle_values = values[:_HANDLE_PART], values[_HANDLE_PART:]
                if locked is not None and values[_HANDLE_ID] not in locked:
                    busy.add(bytes(values[_DIGEST]))  # another transaction holds it
                    continue
                secret = decoded.secret(secret_values)
                if secret is None:
                    secret = rows.secret_from_values(values[:_SECRET_END])
                    if not self._authentic_secret(secret, values[_SECRET_END]):
                        continue
                    decoded.keep_secret(secret_values, secret)
                handle = decoded.handle(handle_values)
                if handle is None:
                    handle = rows.handle_from_values(values[_HANDLE_START:])
                    if not self._intact_handle(handle, values[_SECRET_END + 1]):
                        continue
                    decoded.keep_handle(handle_values, handle)
                found[secret.digest] = (secret, handle)
        return found, busy

    def lock_handles(self, handle_ids: Sequence[str]) -> None:
        self._lock_rows("handles", handle_ids)

    def insert_handle(self, handle: Handle) -> None:
        row = rows.handle_row(handle)
        row["mac"] = self._integrity.tag("handles", handle_fields(handle), handle.id)
        self._run(*insert("handles", row))

    def update_handle(self, before: Handle, after: Handle) -> None:
        if _settled_fields(before) == _settled_fields(after):
            # A plain validation: one prepared statement, no diff (the hot path).
            rate, last_used = after.rate, after.last_used_time
            if (
                after.usage_count == before.usage_count
                and last_used == before.last_used_time
                and rate == before.rate
            ):
                return
            counters = (
                after.usage_count,
                None if last_used is None else to_micros(last_used),
                None if rate.start is None else to_micros(rate.start),
                rate.previous,
                rate.current,
                None if rate.flagged is None else to_micros(rate.flagged),
            )
            tag = self._integrity.tag("handles", handle_fields(after), after.id)
            self._run(_COUNT_USE, (*counters, tag, after.id))
            self._integrity.decoded.wrote_counters(before, after, counters, tag)
            return
        self._integrity.decoded.forget_handle(before.id)
        changed = rows.handle_changes(before, after)
        if changed:
            changed["mac"] = self._integrity.tag("handles", handle_fields(after), after.id)
            self._run(*update("handles", changed, {"id": before.id}))

    def count_active_handles(self, owner: str, now: datetime, lock: bool = False) -> int:
        if lock and self.concurrent_writers:
            # Until the transaction ends; an owner's name hashed into the two-key space of
            # advisory locks, apart from the one-key locks of store/postgres.
            self._one("SELECT pg_advisory_xact_lock(?, hashtext(?))", (OWNER_LOCKS, owner))
        row = self._one(
            "SELECT COUNT(*) AS n FROM handles WHERE owner = ? AND state = 'ACTIVE' "
            "AND expire_time > ?",
            (owner, to_micros(now)),
        )
        return int(row["n"])

    def earliest_active_expiry(self, owner: str, now: datetime) -> datetime | None:
        row = self._one(
            "SELECT MIN(expire_time) AS t FROM handles WHERE owner = ? AND state = 'ACTIVE' "
            "AND expire_time > ?",
            (owner, to_micros(now)),
        )
        return None if row is None or row["t"] is None else from_micros(row["t"])

    def get_secret(self, digest: bytes) -> HandleSecret | None:
        """The secret with this digest; a tampered one is as unknown."""
        row = self._one("SELECT * FROM handle_secrets WHERE digest = ?", (digest,))
        if row is None:
            return None
        secret = rows.secret_from_row(row)
        return secret if self._authentic_secret(secret, row["mac"]) else None

    def secrets_of(self, handle_id: str) -> list[HandleSecret]:
        found = self._all(
            "SELECT * FROM handle_secrets WHERE handle_id = ? ORDER BY generation", (handle_id,)
        )
        secrets = [(rows.secret_from_row(r), r["mac"]) for r in found]
        return [s for s, mac in secrets if self._authentic_secret(s, mac)]

    def live_secrets_of(self, handle_id: str, generation: int, now: datetime) -> list[HandleSecret]:
        found = self._all(
            "SELECT * FROM handle_secrets WHERE handle_id = ? AND (generation = ? "
            "OR grace_until > ? OR sealed_token IS NOT NULL) ORDER BY generation",
            (handle_id, generation, to_micros(now)),
        )
        secrets = [(rows.secret_from_row(r), r["mac"]) for r in found]
        return [s for s, mac in secrets if self._authentic_secret(s, mac)]

    def insert_secret(self, secret: HandleSecret) -> None:
        self._run(*insert("handle_secrets", self._tagged_secret(secret)))

    def update_secret(self, secret: HandleSecret) -> None:
        self._run(*update_row("handle_secrets", self._tagged_secret(secret), ("digest",)))

    def _tagged_secret(self, secret: HandleSecret) -> dict[str, object]:
        row = rows.secret_row(secret)
        row["mac"] = self._integrity.tag(
            "handle_secrets", secret_fields(secret), _secret_record(secret)
        )
        return row

    def list_handles(
        self,
        now: datetime,
        type_name: str,
        status: HandleStatus | None,
        owner: str,
        after: Cursor | None,
        limit: int,
        total: int | None = None,
    ) -> Listing[Handle]:
        status_sql = None if status is None else HANDLE_STATUS[status]
        found = self._page("handles", now, type_name, status_sql, owner, after, limit, total)
        return Listing(self._authentic_handles(found.items), found.total, found.more)

    def handle_counts(self, now: datetime) -> list[tuple[str, str, int, int, int]]:
        """(type, status, count, total usage, max usage) per type and computed status."""
        n = to_micros(now)
        found = self._all(_HANDLE_COUNTS.replace(":now", "?"), [n] * _HANDLE_COUNTS.count(":now"))
        return [(r["type"], r["status"], r["n"], r["usage"], r["top"]) for r in found]

    def oldest_ended_handle(self) -> datetime | None:
        row = self._one(OLDEST_ENDED)
        return None if row is None or row["t"] is None else from_micros(row["t"])

    def purge_handles(self, ended_before: datetime, limit: int) -> int:
        found = self._all(ENDED_BEFORE, (to_micros(ended_before), min(limit, IN_LIMIT)))
        ids = [r["id"] for r in found]
        if ids:
            marks = ", ".join("?" * len(ids))
            self._run(f"DELETE FROM handle_secrets WHERE handle_id IN ({marks})", ids)
            self._run(f"DELETE FROM handles WHERE id IN ({marks})", ids)
        return len(ids)

    def handles_overdue(self, now: datetime) -> int:
        row = self._one(
            "SELECT COUNT(*) AS n FROM handles WHERE state = 'ACTIVE' AND rotate_time <= ? "
            "AND expire_time > ?",
            (to_micros(now), to_micros(now)),
        )
        return int(row["n"])

    def handles_in_warning(
        self, now: datetime, limit: int, after: tuple[int, str] | None, owner: str = ""
    ) -> list[Handle]:
        """Active handles inside their warning window, by (warn_time, id) after a cursor;
        only ``owner``'s when given."""
        n = to_micros(now)
        t, i = after if after is not None else (-1, "")
        mine = " AND owner = ?" if owner else ""
        found = self._all(
            "SELECT * FROM handles WHERE state = 'ACTIVE' AND warn_time <= ? "
            f"AND expire_time > ? AND (warn_time > ? OR (warn_time = ? AND id > ?)){mine} "
            "ORDER BY warn_time, id LIMIT ?",
            (n, n, t, t, i, *((owner,) if owner else ()), limit),
        )
        return self._authentic_handles(found)

    # --- anomalies ---------------------------------------------------------------------

    def insert_anomaly(self, anomaly: Anomaly) -> None:
        data = rows.anomaly_json(anomaly)
        data["evidence"] = json.dumps(anomaly.evidence, sort_keys=True)
        self._run(*insert("anomalies", data))

    def anomaly_counts(self, since: datetime | None = None, owner: str = "") -> dict[str, int]:
        conditions: list[str] = []
        params: list[object] = []
        if since is not None:
            conditions.append("time >= ?")
            params.append(to_micros(since))
        if owner:
            conditions.append("handle_id IN (SELECT id FROM handles WHERE owner = ?)")
            params.append(owner)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        found = self._all(f"SELECT kind, COUNT(*) AS n FROM anomalies{where} GROUP BY kind", params)
        return {r["kind"]: r["n"] for r in found}


def _secret_record(secret: HandleSecret) -> str:
    return f"{secret.handle_id} generation {secret.generation}"
