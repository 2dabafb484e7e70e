"""Domain records to protobuf messages (and back where requests carry records)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from keyturn.v1 import (
    admin_pb2,
    events_pb2,
    handles_pb2,
    resources_pb2,
    statistics_pb2,
)
from keyturn_server.clock import to_micros
from keyturn_server.domain.access import Role
from keyturn_server.domain.access_tokens import AccessToken
from keyturn_server.domain.anomalies import Anomaly, AnomalyAction, AnomalyKind, Severity
from keyturn_server.domain.audit import AuditEntry
from keyturn_server.domain.errors import InvalidArgument
from keyturn_server.domain.events import EventKind
from keyturn_server.domain.handle_service import Validation
from keyturn_server.domain.handles import Handle, HandleStatus, Reason
from keyturn_server.domain.keys import Key, KeyStatus, VersionState
from keyturn_server.domain.statistics import LatencySummary, RecentCounts
from keyturn_server.domain.watch import StreamItem


def ts(when: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if when is None else stamp(when)


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    # Timestamp.FromDatetime goes through a time tuple; integer arithmetic is cheaper.
    seconds, micros = divmod(to_micros(when), 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def dur(delta: timedelta) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromTimedelta(delta)
    return value


#: google.protobuf.Timestamp's valid range, 0001-01-01 to 9999-12-31 (what datetime holds).
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
#: google.protobuf.Duration's valid range, about 10,000 years either way.
MAX_DURATION_SECONDS = 315_576_000_000
_NANOS = 1_000_000_000


def from_ts(stamp: timestamp_pb2.Timestamp, present: bool, field: str) -> datetime | None:
    """A request's Timestamp, refused with a field violation outside the range the
    protobuf defines (which datetime cannot hold)."""
    if not present:
        return None
    if not (
        MIN_TIMESTAMP_SECONDS <= stamp.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= stamp.nanos < _NANOS
    ):
        raise InvalidArgument(
            "must be a time between 0001-01-01 and 9999-12-31 (nanos 0 to 999,999,999)",
            field=field,
        )
    return stamp.ToDatetime(tzinfo=UTC)


def from_duration(value: duration_pb2.Duration, field: str) -> timedelta:
    """A request's Duration, refused with a field violation outside the range the
    protobuf defines; the domain checks the range each use allows."""
    seconds, nanos = value.seconds, value.nanos
    if not (
        abs(seconds) <= MAX_DURATION_SECONDS
        and abs(nanos) < _NANOS
        and (seconds == 0 or nanos == 0 or (seconds > 0) == (nanos > 0))
    ):
        raise InvalidArgument(
            "must be a duration within 10,000 years (seconds and nanos of one sign)",
            field=field,
        )
    return value.ToTimedelta()


E = TypeVar("E")

# --- enums -------------------------------------------------------------------------------

KEY_STATUS = {s: resources_pb2.KeyStatus.Value(f"KEY_STATUS_{s.value}") for s in KeyStatus}
KEY_STATUS_FROM = {v: k for k, v in KEY_STATUS.items()}
HANDLE_STATUS = {
    s: resources_pb2.HandleStatus.Value(f"HANDLE_STATUS_{s.value}") for s in HandleStatus
}
HANDLE_STATUS_FROM = {v: k for k, v in HANDLE_STATUS.items()}
VERSION_STATE = {
    s: resources_pb2.KeyVersionState.Value(f"KEY_VERSION_STATE_{s.value}") for s in VersionState
}
ANOMALY_KIND = {k: resources_pb2.AnomalyKind.Value(f"ANOMALY_KIND_{k.value}") for k in AnomalyKind}
SEVERITY = {s: resources_pb2.AnomalySeverity.Value(f"ANOMALY_SEVERITY_{s.name}") for s in Severity}
ACTION = {a: resources_pb2.AnomalyAction.Value(f"ANOMALY_ACTION_{a.value}") for a in AnomalyAction}
ANOMALY_KIND_FROM = {v: k for k, v in ANOMALY_KIND.items()}
EVENT_KIND = {k: events_pb2.EventKind.Value(f"EVENT_KIND_{k.value}") for k in EventKind}
EVENT_KIND_FROM = {v: k for k, v in EVENT_KIND.items()}
REASON = {r: handles_pb2.ValidationReason.Value(f"VALIDATION_REASON_{r.value}") for r in Reason}
ROLE = {r: resources_pb2.Role.Value(f"ROLE_{r.value}") for r in Role}
ROLE_FROM = {v: k for k, v in ROLE.items()}


def optional_enum(table: Mapping[Any, E], value: int, field: str) -> E | None:
    """A request enum where unspecified means "any"; unknown values are refused."""
    return None if value == 0 else required_enum(table, value, field)


def required_enum(table: Mapping[Any, E], value: int, field: str) -> E:
    if value == 0:
        raise InvalidArgument("required", field=field)
    if value not in table:
        raise InvalidArgument(f"unknown enum value {value}", field=field)
    return table[value]


# --- resources -----------------------------------------------------------------------------


def key_message(
    key: Key, now: datetime, into: resources_pb2.Key | None = None
) -> resources_pb2.Key:
    """``key`` as a message, filled in place (``into``, e.g. a stream message's field):
    setting fields directly is half the cost of building temporaries and copying them."""
    message = resources_pb2.Key() if into is None else into
    message.id = key.id
    message.type = key.type
    message.algorithm = key.algorithm
    message.status = KEY_STATUS[key.status(now)]
    message.primary_version = key.primary_version
    for v in key.versions:
        version = message.versions.add()
        version.version = v.version
        version.state = VERSION_STATE[v.state]
        _set_stamp(version.create_time, v.create_time)
        _set_stamp(version.expire_time, v.expire_time)
        if v.destroy_time is not None:
            _set_stamp(version.destroy_time, v.destroy_time)
        version.primary = v.version == key.primary_version
    if key.metadata:
        message.metadata.update(key.metadata)
    message.owner = key.owner
    _set_stamp(message.create_time, key.create_time)
    if key.next_rotation_time is not None:
        _set_stamp(message.next_rotation_time, key.next_rotation_time)
    _set_stamp(message.expire_time, key.expire_time)
    if key.destroy_time is not None:
        _set_stamp(message.destroy_time, key.destroy_time)
    message.usage_count = key.usage_count
    if key.last_used_time is not None:
        _set_stamp(message.last_used_time, key.last_used_time)
    message.exportable = key.exportable
    if key.warn_time is not None:
        _set_stamp(message.warn_time, key.warn_time)
    message.created_for = key.created_for
    return message


def handle_message(
    handle: Handle, now: datetime, into: resources_pb2.Handle | None = None
) -> resources_pb2.Handle:
    """``handle`` as a message, filled in place (see :func:`key_message`)."""
    message = resources_pb2.Handle() if into is None else into
    message.id = handle.id
    message.type = handle.type
    message.status = HANDLE_STATUS[handle.status(now)]
    message.owner = handle.owner
    if handle.context:
        message.context.update(handle.context)
    message.usage_count = handle.usage_count
    message.max_usage = handle.max_usage
    _set_stamp(message.create_time, handle.create_time)
    _set_stamp(message.rotate_time, handle.rotate_time)
    _set_stamp(message.expire_time, handle.expire_time)
    if handle.last_used_time is not None:
        _set_stamp(message.last_used_time, handle.last_used_time)
    message.anomaly_count = handle.anomaly_count
    message.generation = handle.generation
    message.bound_ip = handle.bound_ip or ""
    message.bound_user_agent = handle.bound_user_agent or ""
    _set_stamp(message.warn_time, handle.warn_time)
    message.revoke_reason = handle.revoke_reason or ""
    message.created_for = handle.created_for
    return message


def anomaly_message(anomaly: Anomaly) -> resources_pb2.Anomaly:
    return resources_pb2.Anomaly(
        id=anomaly.id,
        kind=ANOMALY_KIND[anomaly.kind],
        severity=SEVERITY[anomaly.severity],
        action=ACTION[anomaly.action],
        time=ts(anomaly.time),
        handle_id=anomaly.handle_id,
        evidence=anomaly.evidence,
    )


def fill_validation(message: handles_pb2.Validation, result: Validation) -> None:
    """Fill ``message`` (a response's own field) in place: no temporary messages to copy,
    which the hottest answer of all would otherwise build and copy twice per call."""
    message.valid = result.valid
    if result.rotated:
        message.rotated = True
    if result.anomalies:
        message.anomalies.extend(anomaly_message(a) for a in result.anomalies)
    if result.reason is not None:
        message.reason = REASON[result.reason]
    handle = result.handle
    if handle is not None:
        message.handle_id = handle.id
        message.type = handle.type
        if result.rights:
            message.owner = handle.owner
        message.remaining_uses = handle.remaining_uses
        _set_stamp(message.expire_time, handle.expire_time)
        _set_stamp(message.rotate_time, handle.rotate_time)


def _set_stamp(field: timestamp_pb2.Timestamp, when: datetime) -> None:
    seconds, micros = divmod(to_micros(when), 1_000_000)
    field.seconds = seconds
    field.nanos = micros * 1000


def stream_message(item: StreamItem) -> events_pb2.ExpiryEvent:
    """An item of a watch stream on the wire. A record's status is computed at the item's
    time: an event shows the record as it was when it happened, even when replayed
    long after (a ROTATED handle was ACTIVE then, whatever it is now)."""
    assert item.time is not None, "every stream item carries its time"
    now = item.time
    message = events_pb2.ExpiryEvent(
        kind=EVENT_KIND[item.kind],
        time=ts(item.time),
        deadline=ts(item.deadline),
        token=item.token,
        latest_sequence=item.latest_sequence,
    )
    if item.heartbeat_interval is not None:
        message.heartbeat_interval.FromTimedelta(item.heartbeat_interval)
    record = item.record
    event = item.event
    if event is not None:
        message.sequence = event.sequence
        message.reason = event.reason
        message.key_version = event.key_version
        record = event.snapshot
        if event.anomaly is not None:
            message.anomaly.CopyFrom(anomaly_message(event.anomaly))
    else:
        message.snapshot = record is not None
    if isinstance(record, Key):
        key_message(record, now, into=message.key)
    elif isinstance(record, Handle):
        handle_message(record, now, into=message.handle)
    return message


# --- statistics, audit, tokens --------------------------------------------------------------


def latency(summary: LatencySummary) -> statistics_pb2.LatencySummary:
    return statistics_pb2.LatencySummary(
        count=summary.count, p50=dur(summary.p50), p99=dur(summary.p99), max=dur(summary.max)
    )


def recent_counts(counts: RecentCounts) -> statistics_pb2.RecentCounts:
    return statistics_pb2.RecentCounts(
        last_hour=counts.last_hour, last_day=counts.last_day, last_week=counts.last_week
    )


def audit_message(entry: AuditEntry) -> admin_pb2.AuditEvent:
    draft = entry.draft
    message = admin_pb2.AuditEvent(
        sequence=entry.sequence,
        time=ts(entry.time),
        action=draft.action,
        principal=draft.principal,
        user_id=draft.user_id,
        resource_type=draft.resource_type,
        resource_id=draft.resource_id,
        reason=draft.reason,
        peer=draft.peer,
        outcome=draft.outcome,
        details=draft.details,
        hash=entry.hash,
        previous_hash=entry.previous_hash,
    )
    if draft.role in Role.__members__:
        message.role = ROLE[Role(draft.role)]
    return message


def access_token_message(token: AccessToken) -> admin_pb2.AccessToken:
    return admin_pb2.AccessToken(
        name=token.name,
        role=ROLE[token.role],
        create_time=ts(token.create_time),
        expire_time=ts(token.expire_time),
        revoke_time=ts(token.revoke_time),
        created_by=token.created_by,
        last_used_time=ts(token.last_used_time),
    )
