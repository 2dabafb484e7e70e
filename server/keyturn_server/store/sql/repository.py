"""All SQL of the service, shared by the SQLite and PostgreSQL backends.

Statements use ``?`` placeholders; the PostgreSQL connection adapter rewrites them.
A :class:`SqlRepository` wraps one connection: the stores hand one to each write
transaction (the domain's unit of work) and keep one for reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from keyturn_server.clock import from_micros, optional_datetime, to_micros
from keyturn_server.domain.access_tokens import AccessToken
from keyturn_server.domain.anomalies import Anomaly
from keyturn_server.domain.audit import GENESIS, AuditDraft, AuditEntry
from keyturn_server.domain.events import Event, NewEvent
from keyturn_server.domain.handles import Handle, HandleSecret, HandleStatus
from keyturn_server.domain.keys import Key, KeyStatus, KeyVersion
from keyturn_server.domain.paging import Cursor
from keyturn_server.store import rows

#: Parameters per ``IN (...)`` list: well within both SQLite's and PostgreSQL's limits.
_IN_LIMIT = 500


class Cursorlike(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """The part of a DB-API connection the repository uses; rows support ``row["col"]``."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursorlike: ...


@dataclass
class Listing:
    items: list[Any]
    total: int
    more: bool


@dataclass
class Deadline:
    what: str
    time: datetime


# Computed statuses in SQL: must agree with Key.status / Handle.status.
def _key_status_sql(status: KeyStatus) -> str:
    return {
        KeyStatus.ACTIVE: "state = 'ACTIVE' AND expire_time > :now "
        "AND (warn_time IS NULL OR warn_time > :now)",
        KeyStatus.EXPIRING: "state = 'ACTIVE' AND expire_time > :now AND warn_time <= :now",
        KeyStatus.EXPIRED: "(state = 'EXPIRED' OR (state = 'ACTIVE' AND expire_time <= :now))",
        KeyStatus.REMOVED: "state = 'REMOVED'",
        KeyStatus.DESTROYED: "state = 'DESTROYED'",
    }[status]


def _handle_status_sql(status: HandleStatus) -> str:
    return {
        HandleStatus.ACTIVE: "state = 'ACTIVE' AND expire_time > :now AND warn_time > :now",
        HandleStatus.EXPIRING: "state = 'ACTIVE' AND expire_time > :now AND warn_time <= :now",
        HandleStatus.EXPIRED: "(state = 'EXPIRED' OR "
        "(state IN ('ACTIVE', 'EXHAUSTED') AND expire_time <= :now))",
        HandleStatus.EXHAUSTED: "state = 'EXHAUSTED' AND expire_time > :now",
        HandleStatus.REVOKED: "state = 'REVOKED'",
    }[status]


@dataclass
class _Where:
    clauses: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)

    def add(self, clause: str, *params: Any) -> None:
        self.clauses.append(clause)
        self.params.extend(params)

    def add_named_now(self, clause: str, now: int) -> None:
        count = clause.count(":now")
        self.clauses.append(clause.replace(":now", "?"))
        self.params.extend([now] * count)

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


def _insert(table: str, row: dict[str, Any]) -> tuple[str, list[Any]]:
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    return f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values())


def _update(table: str, row: dict[str, Any], key: Sequence[str]) -> tuple[str, list[Any]]:
    sets = ", ".join(f"{c} = ?" for c in row if c not in key)
    where = " AND ".join(f"{c} = ?" for c in key)
    params = [v for c, v in row.items() if c not in key] + [row[c] for c in key]
    return f"UPDATE {table} SET {sets} WHERE {where}", params


class SqlRepository:
    """Reads and writes on one connection. Inside a write transaction it also collects
    the events appended and the callbacks to run once the transaction commits."""

    def __init__(self, conn: Connection, lock_for_append: Callable[[], None] | None = None):
        self._conn = conn
        self._lock_for_append = lock_for_append
        self.events: list[Event] = []
        self.after_commit_callbacks: list[Callable[[], None]] = []

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(sql, params).fetchone()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, params)

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.after_commit_callbacks.append(callback)

    # --- meta and config ---------------------------------------------------------------

    def get_meta(self, name: str) -> bytes | None:
        row = self._one("SELECT value FROM meta WHERE name = ?", (name,))
        return None if row is None else bytes(row["value"])

    def set_meta(self, name: str, value: bytes) -> None:
        self._run(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def meta_names(self, prefix: str) -> list[str]:
        found = self._all("SELECT name FROM meta WHERE name LIKE ? ORDER BY name", (prefix + "%",))
        return [r["name"] for r in found]

    def delete_meta(self, name: str) -> None:
        self._run("DELETE FROM meta WHERE name = ?", (name,))

    # --- sealed columns (master key rotation walks them) ---------------------------------

    #: table -> (primary key columns, sealed column, other columns the binding needs)
    SEALED: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
        "key_versions": (("key_id", "version"), "material", ()),
        "handle_secrets": (("digest",), "sealed_token", ("handle_id", "generation")),
        "events": (("sequence",), "sealed_token", ("subject_id", "snapshot")),
    }

    def sealed_after(
        self, table: str, after: tuple[Any, ...] | None, limit: int
    ) -> list[dict[str, Any]]:
        """Rows of ``table`` holding a sealed value, by primary key after ``after``."""
        keys, column, extra = self.SEALED[table]
        columns = ", ".join((*keys, *extra, f"{column} AS blob"))
        where = f"{column} IS NOT NULL"
        params: list[Any] = []
        if after is not None:
            where += f" AND ({', '.join(keys)}) > ({', '.join('?' for _ in keys)})"
            params.extend(after)
        found = self._all(
            f"SELECT {columns} FROM {table} WHERE {where} ORDER BY {', '.join(keys)} LIMIT ?",
            [*params, limit],
        )
        return [dict(r) for r in found]

    def replace_sealed(self, table: str, row: dict[str, Any], blob: bytes) -> None:
        keys, column, _ = self.SEALED[table]
        where = " AND ".join(f"{k} = ?" for k in keys)
        self._run(f"UPDATE {table} SET {column} = ? WHERE {where}", [blob, *(row[k] for k in keys)])

    def latest_config(self) -> tuple[dict[str, Any], int, datetime, str] | None:
        row = self._one(
            "SELECT revision, body, update_time, updated_by FROM config "
            "ORDER BY revision DESC LIMIT 1"
        )
        if row is None:
            return None
        return (
            json.loads(row["body"]),
            row["revision"],
            from_micros(row["update_time"]),
            row["updated_by"],
        )

    def put_config(self, body: dict[str, Any], revision: int, time: datetime, by: str) -> None:
        self._run(
            "INSERT INTO config (revision, body, update_time, updated_by) VALUES (?, ?, ?, ?)",
            (revision, json.dumps(body, sort_keys=True), to_micros(time), by),
        )

    # --- keys --------------------------------------------------------------------------

    def get_key(self, key_id: str, for_update: bool = False) -> Key | None:
        lock = " FOR UPDATE" if for_update and self._lock_for_append else ""
        row = self._one(f"SELECT * FROM keys WHERE id = ?{lock}", (key_id,))
        if row is None:
            return None
        return rows.key_from_row(row, self.versions_of(key_id))

    def versions_of(self, key_id: str) -> tuple[KeyVersion, ...]:
        found = self._all(
            "SELECT key_id, version, state, create_time, expire_time, destroy_time, public_pem "
            "FROM key_versions WHERE key_id = ? ORDER BY version",
            (key_id,),
        )
        return tuple(rows.version_from_row(r) for r in found)

    def insert_key(self, key: Key) -> None:
        self._run(*_insert("keys", rows.key_row(key)))

    def update_key(self, key: Key) -> None:
        self._run(*_update("keys", rows.key_row(key), ("id",)))

    def insert_version(self, version: KeyVersion, sealed_material: bytes) -> None:
        row = rows.version_row(version)
        row["material"] = sealed_material
        self._run(*_insert("key_versions", row))

    def update_version(self, version: KeyVersion) -> None:
        self._run(*_update("key_versions", rows.version_row(version), ("key_id", "version")))

    def destroy_material(self, key_id: str, version: int) -> None:
        self._run(
            "UPDATE key_versions SET material = NULL WHERE key_id = ? AND version = ?",
            (key_id, version),
        )

    def sealed_material(self, key_id: str, version: int) -> bytes | None:
        row = self._one(
            "SELECT material FROM key_versions WHERE key_id = ? AND version = ?",
            (key_id, version),
        )
        return None if row is None or row["material"] is None else bytes(row["material"])

    def add_key_usage(self, usage: dict[str, tuple[int, datetime]]) -> None:
        for key_id, (count, last) in usage.items():
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
    ) -> Listing:
        status_sql = None if status is None else _key_status_sql(status)
        found = self._page("keys", now, type_name, status_sql, owner, after, limit)
        keys = [rows.key_from_row(r, self.versions_of(r["id"])) for r in found.items]
        return Listing(keys, found.total, found.more)

    def _page(
        self,
        table: str,
        now: datetime,
        type_name: str,
        status_sql: str | None,
        owner: str,
        after: Cursor | None,
        limit: int,
    ) -> Listing:
        """Rows of ``table`` matching the filters, by (create_time, id) after a cursor,
        with the total across pages (AIP-158)."""
        where = _Where()
        if type_name:
            where.add("type = ?", type_name)
        if owner:
            where.add("owner = ?", owner)
        if status_sql is not None:
            where.add_named_now(status_sql, to_micros(now))
        total = self._one(f"SELECT COUNT(*) AS n FROM {table}{where.sql()}", where.params)["n"]
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

    def key_counts(self, now: datetime) -> list[tuple[str, str, int, int, int]]:
        """(type, status, count, usage, versions) for every type and computed status."""
        n = to_micros(now)
        found = self._all(
            "SELECT type, CASE "
            "WHEN state <> 'ACTIVE' THEN state "
            "WHEN expire_time <= ? THEN 'EXPIRED' "
            "WHEN warn_time IS NOT NULL AND warn_time <= ? THEN 'EXPIRING' "
            "ELSE 'ACTIVE' END AS status, COUNT(*) AS n, "
            "CAST(COALESCE(SUM(usage_count), 0) AS BIGINT) AS usage, "
            "CAST(COALESCE(SUM(primary_version), 0) AS BIGINT) AS versions "
            "FROM keys GROUP BY 1, 2",
            (n, n),
        )
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

    # --- handles -----------------------------------------------------------------------

    def get_handle(self, handle_id: str, for_update: bool = False) -> Handle | None:
        lock = " FOR UPDATE" if for_update and self._lock_for_append else ""
        row = self._one(f"SELECT * FROM handles WHERE id = ?{lock}", (handle_id,))
        return None if row is None else rows.handle_from_row(row)

    def secrets_with_handles(
        self, digests: Sequence[bytes]
    ) -> dict[bytes, tuple[HandleSecret, Handle, Any]]:
        """The secrets with these digests and their handles (locked, in id order, so that
        replicas locking overlapping sets cannot deadlock), in one statement, with each
        handle's stored row for :meth:`update_handle_columns`."""
        found: dict[bytes, tuple[HandleSecret, Handle, Any]] = {}
        wanted = list(dict.fromkeys(digests))
        lock = " FOR UPDATE OF h" if self._lock_for_append else ""
        for start in range(0, len(wanted), _IN_LIMIT):
            chunk = wanted[start : start + _IN_LIMIT]
            marks = ", ".join("?" * len(chunk))
            for row in self._all(
                "SELECT h.*, s.digest AS s_digest, s.generation AS s_generation, "
                "s.create_time AS s_create_time, s.superseded_time AS s_superseded_time, "
                "s.grace_until AS s_grace_until, s.sealed_token AS s_sealed_token "
                "FROM handle_secrets s JOIN handles h ON h.id = s.handle_id "
                f"WHERE s.digest IN ({marks}) ORDER BY h.id{lock}",
                chunk,
            ):
                digest = bytes(row["s_digest"])
                secret = HandleSecret(
                    digest=digest,
                    handle_id=row["id"],
                    generation=row["s_generation"],
                    create_time=from_micros(row["s_create_time"]),
                    superseded_time=optional_datetime(row["s_superseded_time"]),
                    grace_until=optional_datetime(row["s_grace_until"]),
                    sealed_token=rows.optional_bytes(row["s_sealed_token"]),
                )
                found[digest] = (secret, rows.handle_from_row(row), row)
        return found

    def update_handle_columns(self, handle_id: str, stored: Any, handle: Handle) -> None:
        """Update the columns a validation may change that differ from the ``stored`` row:
        a plain validation writes no indexed column, so SQLite updates no index."""
        changed = {k: v for k, v in rows.handle_use_row(handle).items() if stored[k] != v}
        if changed:
            sets = ", ".join(f"{column} = ?" for column in changed)
            self._run(f"UPDATE handles SET {sets} WHERE id = ?", [*changed.values(), handle_id])

    def insert_handle(self, handle: Handle) -> None:
        self._run(*_insert("handles", rows.handle_row(handle)))

    def update_handle(self, handle: Handle) -> None:
        self._run(*_update("handles", rows.handle_row(handle), ("id",)))

    def count_active_handles(self, owner: str, now: datetime) -> int:
        row = self._one(
            "SELECT COUNT(*) AS n FROM handles WHERE owner = ? AND state = 'ACTIVE' "
            "AND expire_time > ?",
            (owner, to_micros(now)),
        )
        return int(row["n"])

    def get_secret(self, digest: bytes) -> HandleSecret | None:
        row = self._one("SELECT * FROM handle_secrets WHERE digest = ?", (digest,))
        return None if row is None else rows.secret_from_row(row)

    def secrets_of(self, handle_id: str) -> list[HandleSecret]:
        found = self._all(
            "SELECT * FROM handle_secrets WHERE handle_id = ? ORDER BY generation", (handle_id,)
        )
        return [rows.secret_from_row(r) for r in found]

    def insert_secret(self, secret: HandleSecret) -> None:
        self._run(*_insert("handle_secrets", rows.secret_row(secret)))

    def update_secret(self, secret: HandleSecret) -> None:
        self._run(*_update("handle_secrets", rows.secret_row(secret), ("digest",)))

    def list_handles(
        self,
        now: datetime,
        type_name: str,
        status: HandleStatus | None,
        owner: str,
        after: Cursor | None,
        limit: int,
    ) -> Listing:
        status_sql = None if status is None else _handle_status_sql(status)
        found = self._page("handles", now, type_name, status_sql, owner, after, limit)
        return Listing([rows.handle_from_row(r) for r in found.items], found.total, found.more)

    def handle_counts(self, now: datetime) -> list[tuple[str, str, int, int, int]]:
        """(type, status, count, total usage, max usage) per type and computed status."""
        n = to_micros(now)
        found = self._all(
            "SELECT type, CASE "
            "WHEN state = 'REVOKED' THEN 'REVOKED' "
            "WHEN state = 'EXPIRED' OR expire_time <= ? THEN 'EXPIRED' "
            "WHEN state = 'EXHAUSTED' THEN 'EXHAUSTED' "
            "WHEN warn_time <= ? THEN 'EXPIRING' "
            "ELSE 'ACTIVE' END AS status, COUNT(*) AS n, "
            "CAST(COALESCE(SUM(usage_count), 0) AS BIGINT) AS usage, "
            "COALESCE(MAX(usage_count), 0) AS top "
            "FROM handles GROUP BY 1, 2",
            (n, n),
        )
        return [(r["type"], r["status"], r["n"], r["usage"], r["top"]) for r in found]

    def handles_overdue(self, now: datetime) -> int:
        row = self._one(
            "SELECT COUNT(*) AS n FROM handles WHERE state = 'ACTIVE' AND rotate_time <= ? "
            "AND expire_time > ?",
            (to_micros(now), to_micros(now)),
        )
        return int(row["n"])

    # --- anomalies ---------------------------------------------------------------------

    def insert_anomaly(self, anomaly: Anomaly) -> None:
        data = rows.anomaly_json(anomaly)
        data["evidence"] = json.dumps(anomaly.evidence, sort_keys=True)
        self._run(*_insert("anomalies", data))

    def anomaly_counts(self, since: datetime | None = None) -> dict[str, int]:
        where, params = ("", ()) if since is None else (" WHERE time >= ?", (to_micros(since),))
        found = self._all(f"SELECT kind, COUNT(*) AS n FROM anomalies{where} GROUP BY kind", params)
        return {r["kind"]: r["n"] for r in found}

    # --- events ------------------------------------------------------------------------

    def append_event(self, new: NewEvent, time: datetime) -> Event:
        if self._lock_for_append is not None:
            self._lock_for_append()
        anomaly = json.dumps(rows.anomaly_json(new.anomaly)) if new.anomaly else None
        row = self._one(
            "INSERT INTO events (time, kind, subject, subject_id, subject_type, owner, deadline, "
            "reason, key_version, snapshot, anomaly, sealed_token) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING sequence",
            (
                to_micros(time),
                new.kind.value,
                new.subject.value,
                new.subject_id,
                new.subject_type,
                new.owner,
                None if new.deadline is None else to_micros(new.deadline),
                new.reason,
                new.key_version,
                rows.snapshot_json(new.snapshot),
                anomaly,
                new.sealed_token,
            ),
        )
        event = Event(
            sequence=row["sequence"],
            time=time,
            kind=new.kind,
            subject=new.subject,
            subject_id=new.subject_id,
            subject_type=new.subject_type,
            owner=new.owner,
            snapshot=new.snapshot,
            deadline=new.deadline,
            reason=new.reason,
            key_version=new.key_version,
            anomaly=new.anomaly,
            sealed_token=new.sealed_token,
        )
        self.events.append(event)
        return event

    def events_after(self, sequence: int, limit: int) -> list[Event]:
        found = self._all(
            "SELECT * FROM events WHERE sequence > ? ORDER BY sequence LIMIT ?", (sequence, limit)
        )
        return [rows.event_from_row(r) for r in found]

    def event_bounds(self) -> tuple[int, int]:
        """(oldest retained sequence, latest sequence); (0, latest) when none is kept."""
        row = self._one("SELECT MIN(sequence) AS lo, MAX(sequence) AS hi FROM events")
        latest = max(row["hi"] or 0, self.sequence_floor())
        return (row["lo"] or 0), latest

    def sequence_floor(self) -> int:
        """The highest sequence ever pruned: sequences never go back below it."""
        raw = self.get_meta("events_pruned_through")
        return int(raw.decode()) if raw else 0

    def prune_events(self, before: datetime) -> int:
        row = self._one(
            "SELECT MAX(sequence) AS hi, COUNT(*) AS n FROM events WHERE time < ?",
            (to_micros(before),),
        )
        if not row["n"]:
            return 0
        self._run("DELETE FROM events WHERE sequence <= ?", (row["hi"],))
        self.set_meta("events_pruned_through", str(row["hi"]).encode())
        return int(row["n"])

    def clear_sealed_event_tokens(self, handle_id: str, through: datetime) -> None:
        self._run(
            "UPDATE events SET sealed_token = NULL WHERE subject_id = ? "
            "AND sealed_token IS NOT NULL AND time <= ?",
            (handle_id, to_micros(through)),
        )

    def event_counts(self, since: datetime) -> list[tuple[str, str, int]]:
        found = self._all(
            "SELECT subject, kind, COUNT(*) AS n FROM events WHERE time >= ? GROUP BY 1, 2",
            (to_micros(since),),
        )
        return [(r["subject"], r["kind"], r["n"]) for r in found]

    # --- audit -------------------------------------------------------------------------

    def append_audit(
        self, draft: AuditDraft, time: datetime, link: Callable[[bytes, int], bytes]
    ) -> AuditEntry:
        if self._lock_for_append is not None:
            self._lock_for_append()
        head = self._one("SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1")
        sequence = 1 if head is None else head["sequence"] + 1
        previous = GENESIS if head is None else bytes(head["hash"])
        digest = link(previous, sequence)
        self._run(
            "INSERT INTO audit (sequence, time, action, principal, role, user_id, resource_type, "
            "resource_id, reason, peer, outcome, details, hash, previous_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sequence,
                to_micros(time),
                draft.action,
                draft.principal,
                draft.role,
                draft.user_id,
                draft.resource_type,
                draft.resource_id,
                draft.reason,
                draft.peer,
                draft.outcome,
                json.dumps(draft.details, sort_keys=True),
                digest,
                previous,
            ),
        )
        self.set_meta("audit_head", f"{sequence}:{digest.hex()}".encode())
        return AuditEntry(sequence, time, draft, digest, previous)

    def list_audit(
        self,
        action: str,
        principal: str,
        resource_id: str,
        start: datetime | None,
        end: datetime | None,
        after: int | None,
        descending: bool,
        limit: int,
    ) -> Listing:
        where = _Where()
        if action:
            where.add("action = ?", action)
        if principal:
            where.add("principal = ?", principal)
        if resource_id:
            where.add("resource_id = ?", resource_id)
        if start is not None:
            where.add("time >= ?", to_micros(start))
        if end is not None:
            where.add("time < ?", to_micros(end))
        total = self._one(f"SELECT COUNT(*) AS n FROM audit{where.sql()}", where.params)["n"]
        if after is not None:
            where.add("sequence < ?" if descending else "sequence > ?", after)
        order = "DESC" if descending else "ASC"
        found = self._all(
            f"SELECT * FROM audit{where.sql()} ORDER BY sequence {order} LIMIT ?",
            [*where.params, limit + 1],
        )
        return Listing([rows.audit_from_row(r) for r in found[:limit]], total, len(found) > limit)

    def iter_audit(self, batch: int = 1000) -> Iterator[AuditEntry]:
        after = 0
        while True:
            found = self._all(
                "SELECT * FROM audit WHERE sequence > ? ORDER BY sequence LIMIT ?", (after, batch)
            )
            if not found:
                return
            for r in found:
                yield rows.audit_from_row(r)
            after = found[-1]["sequence"]

    # --- access tokens -----------------------------------------------------------------

    def insert_token(self, token: AccessToken) -> None:
        self._run(*_insert("access_tokens", rows.token_row(token)))

    def update_token(self, token: AccessToken) -> None:
        self._run(*_update("access_tokens", rows.token_row(token), ("name",)))

    def get_token(self, name: str) -> AccessToken | None:
        row = self._one("SELECT * FROM access_tokens WHERE name = ?", (name,))
        return None if row is None else rows.token_from_row(row)

    def token_by_digest(self, digest: bytes) -> AccessToken | None:
        row = self._one("SELECT * FROM access_tokens WHERE digest = ?", (digest,))
        return None if row is None else rows.token_from_row(row)

    def list_tokens(self, include_revoked: bool) -> list[AccessToken]:
        where = "" if include_revoked else " WHERE revoke_time IS NULL"
        found = self._all(f"SELECT * FROM access_tokens{where} ORDER BY name")
        return [rows.token_from_row(r) for r in found]

    def touch_tokens(self, used: dict[str, datetime]) -> None:
        for name, when in used.items():
            self._run(
                "UPDATE access_tokens SET last_used_time = ? WHERE name = ?",
                (to_micros(when), name),
            )

    # --- the scheduler's view: due deadlines, through the partial indexes ---------------

    _DEADLINES: dict[str, str] = {
        "key.notify": "SELECT notify_time AS t FROM keys WHERE state = 'ACTIVE' "
        "AND notify_time IS NOT NULL ORDER BY notify_time LIMIT 1",
        "key.rotate": "SELECT next_rotation_time AS t FROM keys WHERE state = 'ACTIVE' "
        "ORDER BY next_rotation_time LIMIT 1",
        "key.expire": "SELECT expire_time AS t FROM keys WHERE state = 'ACTIVE' "
        "ORDER BY expire_time LIMIT 1",
        "version.expire": "SELECT expire_time AS t FROM key_versions WHERE state = 'ENABLED' "
        "ORDER BY expire_time LIMIT 1",
        "key.destroy": "SELECT destroy_time AS t FROM keys WHERE state = 'REMOVED' "
        "ORDER BY destroy_time LIMIT 1",
        "handle.notify": "SELECT notify_time AS t FROM handles WHERE state = 'ACTIVE' "
        "AND notify_time IS NOT NULL ORDER BY notify_time LIMIT 1",
        "handle.rotate": "SELECT rotate_time AS t FROM handles WHERE state = 'ACTIVE' "
        "ORDER BY rotate_time LIMIT 1",
        "handle.expire": "SELECT expire_time AS t FROM handles "
        "WHERE state IN ('ACTIVE', 'EXHAUSTED') ORDER BY expire_time LIMIT 1",
        "secret.grace": "SELECT grace_until AS t FROM handle_secrets "
        "WHERE sealed_token IS NOT NULL ORDER BY grace_until LIMIT 1",
    }

    _DUE: dict[str, str] = {
        "key.notify": "SELECT id FROM keys WHERE state = 'ACTIVE' AND notify_time IS NOT NULL "
        "AND notify_time <= ? ORDER BY notify_time LIMIT ?",
        "key.rotate": "SELECT id FROM keys WHERE state = 'ACTIVE' "
        "AND next_rotation_time <= ? ORDER BY next_rotation_time LIMIT ?",
        "key.expire": "SELECT id FROM keys WHERE state = 'ACTIVE' "
        "AND expire_time <= ? ORDER BY expire_time LIMIT ?",
        "version.expire": "SELECT key_id || ' ' || CAST(version AS TEXT) AS id FROM key_versions "
        "WHERE state = 'ENABLED' AND expire_time <= ? ORDER BY expire_time LIMIT ?",
        "key.destroy": "SELECT id FROM keys WHERE state = 'REMOVED' "
        "AND destroy_time <= ? ORDER BY destroy_time LIMIT ?",
        "handle.notify": "SELECT id FROM handles WHERE state = 'ACTIVE' "
        "AND notify_time IS NOT NULL AND notify_time <= ? ORDER BY notify_time LIMIT ?",
        "handle.rotate": "SELECT id FROM handles WHERE state = 'ACTIVE' "
        "AND rotate_time <= ? ORDER BY rotate_time LIMIT ?",
        "handle.expire": "SELECT id FROM handles WHERE state IN ('ACTIVE', 'EXHAUSTED') "
        "AND expire_time <= ? ORDER BY expire_time LIMIT ?",
        "secret.grace": "SELECT handle_id || ' ' || CAST(generation AS TEXT) AS id "
        "FROM handle_secrets WHERE sealed_token IS NOT NULL AND grace_until <= ? "
        "ORDER BY grace_until LIMIT ?",
    }

    def next_deadlines(self, kinds: Sequence[str]) -> list[Deadline]:
        found = []
        for kind in kinds:
            row = self._one(self._DEADLINES[kind])
            if row is not None and row["t"] is not None:
                found.append(Deadline(kind, from_micros(row["t"])))
        return found

    def due(self, kind: str, now: datetime, limit: int) -> list[str]:
        return [r["id"] for r in self._all(self._DUE[kind], (to_micros(now), limit))]

    def oldest_event_time(self) -> datetime | None:
        row = self._one("SELECT time FROM events ORDER BY sequence LIMIT 1")
        return None if row is None else optional_datetime(row["time"])

    # --- watch snapshot ------------------------------------------------------------------

    def keys_in_warning(
        self, now: datetime, limit: int, after: tuple[int, str] | None
    ) -> list[Key]:
        """Active keys inside their warning window, by (warn_time, id) after a cursor."""
        n = to_micros(now)
        t, i = after if after is not None else (-1, "")
        found = self._all(
            "SELECT * FROM keys WHERE state = 'ACTIVE' AND warn_time <= ? AND expire_time > ? "
            "AND (warn_time > ? OR (warn_time = ? AND id > ?)) ORDER BY warn_time, id LIMIT ?",
            (n, n, t, t, i, limit),
        )
        return [rows.key_from_row(r, self.versions_of(r["id"])) for r in found]

    def handles_in_warning(
        self, now: datetime, limit: int, after: tuple[int, str] | None
    ) -> list[Handle]:
        n = to_micros(now)
        t, i = after if after is not None else (-1, "")
        found = self._all(
            "SELECT * FROM handles WHERE state = 'ACTIVE' AND warn_time <= ? "
            "AND expire_time > ? AND (warn_time > ? OR (warn_time = ? AND id > ?)) "
            "ORDER BY warn_time, id LIMIT ?",
            (n, n, t, t, i, limit),
        )
        return [rows.handle_from_row(r) for r in found]
