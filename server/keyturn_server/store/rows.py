"""Mapping between stored rows and domain records (and the JSON snapshots that events
carry, which are the same rows serialised)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from keyturn_server.clock import from_micros, optional_datetime, optional_micros, to_micros
from keyturn_server.domain.access import Role
from keyturn_server.domain.access_tokens import AccessToken
from keyturn_server.domain.anomalies import Anomaly, AnomalyAction, AnomalyKind, Severity
from keyturn_server.domain.audit import AuditDraft, AuditEntry
from keyturn_server.domain.events import Event, EventKind, Subject
from keyturn_server.domain.handles import (
    Handle,
    HandleSchedule,
    HandleSecret,
    HandleState,
    RateWindow,
)
from keyturn_server.domain.keys import (
    Disabler,
    Key,
    KeySchedule,
    KeyState,
    KeyVersion,
    VersionState,
)

Row = Mapping[str, Any]


def _us(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def _td(micros: int) -> timedelta:
    return timedelta(microseconds=micros)


def optional_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


# --- keys ----------------------------------------------------------------------------


def key_row(key: Key) -> dict[str, Any]:
    return {
        "id": key.id,
        "type": key.type,
        "algorithm": key.algorithm,
        "key_length": key.key_length,
        "state": key.state.value,
        "primary_version": key.primary_version,
        "owner": key.owner,
        "created_for": key.created_for,
        "metadata": json.dumps(key.metadata, sort_keys=True),
        "create_time": to_micros(key.create_time),
        "rotation_interval": _us(key.schedule.rotation_interval),
        "warning_threshold": _us(key.schedule.warning_threshold),
        "max_lifetime": _us(key.schedule.max_lifetime),
        "exportable": int(key.exportable),
        "next_rotation_time": optional_micros(key.next_rotation_time),
        "expire_time": to_micros(key.expire_time),
        "warn_time": optional_micros(key.warn_time),
        "notify_time": optional_micros(key.notify_time),
        "destroy_time": optional_micros(key.destroy_time),
        "usage_count": key.usage_count,
        "last_used_time": optional_micros(key.last_used_time),
        "restore_state": key.restore_state.value if key.restore_state else None,
    }


def key_from_row(row: Row, versions: tuple[KeyVersion, ...] = ()) -> Key:
    return Key(
        id=row["id"],
        type=row["type"],
        algorithm=row["algorithm"],
        key_length=row["key_length"],
        state=KeyState(row["state"]),
        primary_version=row["primary_version"],
        owner=row["owner"],
        created_for=row["created_for"],
        metadata=json.loads(row["metadata"]),
        create_time=from_micros(row["create_time"]),
        schedule=KeySchedule(
            _td(row["rotation_interval"]),
            _td(row["warning_threshold"]),
            _td(row["max_lifetime"]),
        ),
        exportable=bool(row["exportable"]),
        next_rotation_time=optional_datetime(row["next_rotation_time"]),
        expire_time=from_micros(row["expire_time"]),
        warn_time=optional_datetime(row["warn_time"]),
        notify_time=optional_datetime(row["notify_time"]),
        destroy_time=optional_datetime(row["destroy_time"]),
        usage_count=row["usage_count"],
        last_used_time=optional_datetime(row["last_used_time"]),
        restore_state=KeyState(row["restore_state"]) if row["restore_state"] else None,
        versions=versions,
    )


def version_row(version: KeyVersion) -> dict[str, Any]:
    return {
        "key_id": version.key_id,
        "version": version.version,
        "state": version.state.value,
        "create_time": to_micros(version.create_time),
        "expire_time": to_micros(version.expire_time),
        "destroy_time": optional_micros(version.destroy_time),
        "public_pem": version.public_pem,
        "disabled_by": version.disabled_by.value if version.disabled_by else None,
    }


def version_from_row(row: Row) -> KeyVersion:
    return KeyVersion(
        key_id=row["key_id"],
        version=row["version"],
        state=VersionState(row["state"]),
        create_time=from_micros(row["create_time"]),
        expire_time=from_micros(row["expire_time"]),
        destroy_time=optional_datetime(row["destroy_time"]),
        public_pem=row["public_pem"],
        disabled_by=_disabler(row),
    )


def optional_column(row: Mapping[str, Any], name: str) -> Any:
    """A column a row may lack (a version read before schema 6, an older event snapshot):
    sqlite3.Row has no get(), and its ``in`` looks at values, not names."""
    try:
        return row[name]
    except (KeyError, IndexError):
        return None


def _disabler(row: Row) -> Disabler | None:
    if row["state"] == VersionState.ENABLED.value:
        # Enabled by a replica of schema 5 (before it noticed the upgrade), which leaves
        # the holder behind: enabled is enabled.
        return None
    value = optional_column(row, "disabled_by")  # not in event snapshots before schema 6
    if value:
        return Disabler(value)
    if row["state"] == VersionState.DISABLED.value:
        # Disabled before schema 6 recorded by whom: only an operator enables it (fail
        # closed), as after a database edit that clears who holds it.
        return Disabler.OPERATOR
    return None


# --- handles -------------------------------------------------------------------------


def _same(name: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {name: value}


def _time(name: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {name: to_micros(value)}


def _optional_time(name: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {name: optional_micros(value)}


def _schedule_columns(schedule: HandleSchedule) -> dict[str, Any]:
    return {
        "rotation_interval": _us(schedule.rotation_interval),
        "warning_threshold": _us(schedule.warning_threshold),
        "max_lifetime": _us(schedule.max_lifetime),
        "grace_period": _us(schedule.grace_period),
    }


def _rate_columns(rate: RateWindow) -> dict[str, Any]:
    return {
        "rate_start": optional_micros(rate.start),
        "rate_previous": rate.previous,
        "rate_current": rate.current,
        "rate_flagged": optional_micros(rate.flagged),
    }


#: Each field of a Handle (but its id) and the columns that store it.
_HANDLE_COLUMNS: dict[str, Callable[[Any], dict[str, Any]]] = {
    **{
        name: _same(name)
        for name in (
            "type",
            "algorithm",
            "owner",
            "created_for",
            "usage_count",
            "max_usage",
            "generation",
            "anomaly_count",
            "bound_ip",
            "bound_user_agent",
            "revoke_reason",
        )
    },
    **{name: _time(name) for name in ("create_time", "rotate_time", "expire_time", "warn_time")},
    **{name: _optional_time(name) for name in ("notify_time", "last_used_time")},
    "state": lambda state: {"state": state.value},
    "context": lambda context: {"context": json.dumps(context, sort_keys=True)},
    "schedule": _schedule_columns,
    "rate": _rate_columns,
}


def handle_row(handle: Handle) -> dict[str, Any]:
    row: dict[str, Any] = {"id": handle.id}
    fields = handle.__dict__
    for name, columns in _HANDLE_COLUMNS.items():
        row.update(columns(fields[name]))
    return row


def handle_changes(before: Handle, after: Handle) -> dict[str, Any]:
    """The columns of ``after`` whose value differs from ``before``: a plain validation
    changes no indexed column, so an UPDATE of only these touches no index."""
    old, new = before.__dict__, after.__dict__
    changed: dict[str, Any] = {}
    for name, columns in _HANDLE_COLUMNS.items():
        value = new[name]
        if value is not old[name] and value != old[name]:
            changed.update(columns(value))
    return changed


#: The columns a plain validation changes. Every other column of a handle changes only
#: on rotation, binding, revocation and the like, so its mapping (datetimes, the context's
#: JSON, the schedule) is kept, keyed by the raw values read: a row whose other columns
#: differ in any way, forged or not, is mapped afresh, and the MAC is checked on the
#: record mapped either way (store/integrity.py), so the cache grants nothing.
COUNTER_COLUMNS = (
    "usage_count",
    "last_used_time",
    "rate_start",
    "rate_previous",
    "rate_current",
    "rate_flagged",
)
#: The Handle fields stored in COUNTER_COLUMNS.
COUNTER_FIELDS = ("usage_count", "last_used_time", "rate")
_SETTLED_COLUMNS = (
    "id",
    "type",
    "algorithm",
    "state",
    "owner",
    "created_for",
    "context",
    "max_usage",
    "create_time",
    "rotate_time",
    "expire_time",
    "warn_time",
    "rotation_interval",
    "warning_threshold",
    "max_lifetime",
    "grace_period",
    "generation",
    "notify_time",
    "anomaly_count",
    "bound_ip",
    "bound_user_agent",
    "revoke_reason",
)
#: The order of the values :func:`handle_from_values` takes (a SELECT lists them so).
HANDLE_COLUMNS = _SETTLED_COLUMNS + COUNTER_COLUMNS
_SETTLED = len(_SETTLED_COLUMNS)
#: Distinct settled rows kept (about 1.5 KiB each): one per handle validated lately.
SETTLED_CACHE = 16_384
#: Rows whose context, as stored (JSON), is longer than this are decoded on every read
#: instead of kept, here and in integrity.DecodedRows. The caches count rows, not bytes,
#: and a context may hold 32 entries of 256 characters (8.4 KB stored, 22 KB decoded with
#: its row): a service that issued and listed handles with full contexts took each serving
#: process to ~600 MB. Decoding such a row costs ~40 us more per read; ordinary contexts
#: (an environment, a purpose, an ip and a user agent) stay well under this and cached.
CACHED_CONTEXT = 1024
#: Where the context is among HANDLE_COLUMNS' values.
CONTEXT_AT = _SETTLED_COLUMNS.index("context")


def kept(values: tuple[Any, ...]) -> bool:
    """Whether a handle row of these :data:`HANDLE_COLUMNS` values is small enough to keep
    decoded (see CACHED_CONTEXT)."""
    context = values[CONTEXT_AT]
    return not isinstance(context, str) or len(context) <= CACHED_CONTEXT


def handle_from_row(row: Row) -> Handle:
    return handle_from_values(tuple(row[c] for c in HANDLE_COLUMNS))


def handle_from_values(values: tuple[Any, ...]) -> Handle:
    """The Handle of a stored row's :data:`HANDLE_COLUMNS` values, in order (the store
    checks its MAC on the result)."""
    usage, last_used, rate_start, previous, current, flagged = values[_SETTLED:]
    # Built without Handle.__init__ (a frozen dataclass sets each of its 22 fields
    # through object.__setattr__): the same record, at a fraction of the cost.
    handle: Handle = object.__new__(Handle)
    fields = handle.__dict__
    settled = values[:_SETTLED]
    fields.update(_settled(settled) if kept(values) else _settled.__wrapped__(settled))
    fields["usage_count"] = usage
    fields["last_used_time"] = None if last_used is None else from_micros(last_used)
    fields["rate"] = RateWindow(
        None if rate_start is None else _minute(rate_start),
        previous,
        current,
        None if flagged is None else _minute(flagged),
    )
    return handle


@functools.lru_cache(maxsize=SETTLED_CACHE)
def _settled(values: tuple[Any, ...]) -> dict[str, Any]:
    """The fields of a handle's settled columns (never to be mutated: it is shared)."""
    (
        handle_id,
        handle_type,
        algorithm,
        state,
        owner,
        created_for,
        context,
        max_usage,
        create_time,
        rotate_time,
        expire_time,
        warn_time,
        rotation_interval,
        warning_threshold,
        max_lifetime,
        grace_period,
        generation,
        notify_time,
        anomaly_count,
        bound_ip,
        bound_user_agent,
        revoke_reason,
    ) = values
    return {
        "id": handle_id,
        "type": handle_type,
        "algorithm": algorithm,
        "state": HandleState(state),
        "owner": owner,
        "created_for": created_for,
        "context": json.loads(context),
        "max_usage": max_usage,
        "create_time": from_micros(create_time),
        "rotate_time": from_micros(rotate_time),
        "expire_time": from_micros(expire_time),
        "warn_time": from_micros(warn_time),
        "schedule": _schedule(rotation_interval, warning_threshold, max_lifetime, grace_period),
        "generation": generation,
        "notify_time": optional_datetime(notify_time),
        "anomaly_count": anomaly_count,
        "bound_ip": bound_ip,
        "bound_user_agent": bound_user_agent,
        "revoke_reason": revoke_reason,
    }


#: Rate windows start on whole minutes: few distinct values.
_minute = functools.lru_cache(maxsize=256)(from_micros)


@functools.lru_cache(maxsize=1024)
def _schedule(rotation: int, warning: int, lifetime: int, grace: int) -> HandleSchedule:
    # Handles of a type share a schedule (immutable): build each one once.
    return HandleSchedule(_td(rotation), _td(warning), _td(lifetime), _td(grace))


def secret_row(secret: HandleSecret) -> dict[str, Any]:
    return {
        "digest": secret.digest,
        "handle_id": secret.handle_id,
        "generation": secret.generation,
        "create_time": to_micros(secret.create_time),
        "superseded_time": optional_micros(secret.superseded_time),
        "grace_until": optional_micros(secret.grace_until),
        "sealed_token": secret.sealed_token,
    }


SECRET_COLUMNS = (
    "digest",
    "handle_id",
    "generation",
    "create_time",
    "superseded_time",
    "grace_until",
    "sealed_token",
)


def secret_from_row(row: Row) -> HandleSecret:
    return secret_from_values(tuple(row[c] for c in SECRET_COLUMNS))


@functools.lru_cache(maxsize=SETTLED_CACHE)
def secret_from_values(values: tuple[Any, ...]) -> HandleSecret:
    """The HandleSecret of a stored row's :data:`SECRET_COLUMNS` values, in order. A
    secret changes only when its handle rotates: the same row maps to the same record."""
    digest, handle_id, generation, create_time, superseded, grace_until, sealed = values
    return HandleSecret(
        digest=bytes(digest),
        handle_id=handle_id,
        generation=generation,
        create_time=from_micros(create_time),
        superseded_time=optional_datetime(superseded),
        grace_until=optional_datetime(grace_until),
        sealed_token=optional_bytes(sealed),
    )


# --- anomalies, events, audit, access tokens -----------------------------------------


def anomaly_json(anomaly: Anomaly) -> dict[str, Any]:
    return {
        "id": anomaly.id,
        "time": to_micros(anomaly.time),
        "kind": anomaly.kind.value,
        "severity": int(anomaly.severity),
        "action": anomaly.action.value,
        "handle_id": anomaly.handle_id,
        "evidence": anomaly.evidence,
    }


def anomaly_from_json(data: Mapping[str, Any]) -> Anomaly:
    evidence = data["evidence"]
    return Anomaly(
        id=data["id"],
        kind=AnomalyKind(data["kind"]),
        severity=Severity(data["severity"]),
        action=AnomalyAction(data["action"]),
        time=from_micros(data["time"]),
        handle_id=data["handle_id"],
        evidence=json.loads(evidence) if isinstance(evidence, str) else dict(evidence),
    )


def snapshot_json(record: Key | Handle | None) -> str:
    if record is None:
        return "null"
    if isinstance(record, Key):
        body: dict[str, Any] = {
            "key": key_row(record),
            "versions": [version_row(v) for v in record.versions],
        }
    else:
        body = {"handle": handle_row(record)}
    return json.dumps(body, sort_keys=True)


def snapshot_from_json(text: str) -> Key | Handle | None:
    body = json.loads(text)
    if body is None:
        return None
    if "key" in body:
        versions = tuple(version_from_row(v) for v in body["versions"])
        return key_from_row(body["key"], versions)
    return handle_from_row(body["handle"])


def event_from_row(row: Row) -> Event:
    return Event(
        sequence=row["sequence"],
        time=from_micros(row["time"]),
        kind=EventKind(row["kind"]),
        subject=Subject(row["subject"]),
        subject_id=row["subject_id"],
        subject_type=row["subject_type"],
        owner=row["owner"],
        snapshot=snapshot_from_json(row["snapshot"]),
        deadline=optional_datetime(row["deadline"]),
        reason=row["reason"],
        key_version=row["key_version"],
        anomaly=anomaly_from_json(json.loads(row["anomaly"])) if row["anomaly"] else None,
        sealed_token=optional_bytes(row["sealed_token"]),
    )


def audit_from_row(row: Row) -> AuditEntry:
    draft = AuditDraft(
        action=row["action"],
        principal=row["principal"],
        role=row["role"],
        resource_type=row["resource_type"],
        resource_id=row["resource_id"],
        user_id=row["user_id"],
        reason=row["reason"],
        peer=row["peer"],
        outcome=row["outcome"],
        details=json.loads(row["details"]),
    )
    return AuditEntry(
        sequence=row["sequence"],
        time=from_micros(row["time"]),
        draft=draft,
        hash=bytes(row["hash"]),
        previous_hash=bytes(row["previous_hash"]),
    )


def token_row(token: AccessToken) -> dict[str, Any]:
    return {
        "name": token.name,
        "role": token.role.value,
        "digest": token.digest,
        "create_time": to_micros(token.create_time),
        "expire_time": optional_micros(token.expire_time),
        "revoke_time": optional_micros(token.revoke_time),
        "created_by": token.created_by,
        "last_used_time": optional_micros(token.last_used_time),
    }


def token_from_row(row: Row) -> AccessToken:
    return AccessToken(
        name=row["name"],
        role=Role(row["role"]),
        digest=bytes(row["digest"]),
        create_time=from_micros(row["create_time"]),
        created_by=row["created_by"],
        expire_time=optional_datetime(row["expire_time"]),
        revoke_time=optional_datetime(row["revoke_time"]),
        last_used_time=optional_datetime(row["last_used_time"]),
    )
