"""Keyturn messages for people at a terminal: aligned tables, short times and spans,
one line per watch event, the progress of long operations, and enum values by their
short names. Used by the operator commands (`keyturn keys list`, `keyturn watch
keys`...); protobuf JSON is the machine form, this is the human one."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message

from keyturn import KeyturnError
from keyturn.v1 import admin_pb2, events_pb2, resources_pb2

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

V = TypeVar("V", bound=int)
R = TypeVar("R")


def enum_value(wrapper: _EnumTypeWrapper[V], prefix: str, value: V | str | None) -> V:
    """An enum argument given as its number, its full name ("KEY_STATUS_ACTIVE") or its
    short name ("active"); None is the UNSPECIFIED value (no filter)."""
    if value is None:
        return wrapper.Value(f"{prefix}_UNSPECIFIED")
    if not isinstance(value, str):
        return value
    name = value.strip().upper().replace("-", "_")
    if not name.startswith(f"{prefix}_"):
        name = f"{prefix}_{name}"
    try:
        return wrapper.Value(name)
    except ValueError:
        known = ", ".join(short_name(wrapper, prefix, v) for v in wrapper.values() if v)
        raise ValueError(f"{value!r} is not one of: {known}") from None


def short_name(wrapper: _EnumTypeWrapper[V], prefix: str, value: V) -> str:
    """The name without its prefix (ACTIVE for KEY_STATUS_ACTIVE), or the number itself
    when this client does not know it."""
    try:
        return wrapper.Name(value).removeprefix(f"{prefix}_")
    except ValueError:
        return str(int(value))


def emit_json(message: Message, *, compact: bool = False) -> None:
    """Protobuf JSON on stdout: indented, or one line (for streams)."""
    print(json_format.MessageToJson(message, indent=None if compact else 2, sort_keys=compact))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def when(stamp: timestamp_pb2.Timestamp) -> str:
    """UTC to the second; "-" for an unset timestamp."""
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def span(value: duration_pb2.Duration | float) -> str:
    """The two largest units of a duration: 30d, 1h30m, 45s."""
    seconds = int(value if isinstance(value, float | int) else value.ToTimedelta().total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n]
    return "".join(shown[:2]) or "0s"


def pairs(entries: dict[str, str] | Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(entries.items()))


class Progress:
    """`done/total` of a long operation on stderr: one redrawn bar on a terminal, a line
    per tenth of the way otherwise (logs stay short)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done, self.failed = label, total, 0, 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._shown = -1

    def tick(self, ok: bool = True) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        whole = max(self.total, 1)
        if self._tty:
            bar = "#" * (self.done * 30 // whole)
            end = "\n" if self.done == self.total else ""
            print(f"\r{self.label} [{bar:<30}] {self._count()}", end=end, file=self._stream)
        elif self.done * 10 // whole != self._shown:
            self._shown = self.done * 10 // whole
            print(f"{self.label}: {self._count()}", file=self._stream)
        self._stream.flush()

    def _count(self) -> str:
        failed = f" ({self.failed} failed)" if self.failed else ""
        return f"{self.done}/{self.total}{failed}"


async def each(
    label: str, ids: Sequence[str], concurrency: int, act: Callable[[str], Awaitable[R]]
) -> tuple[list[R], int]:
    """``act`` on every id, at most ``concurrency`` at once, with a Progress: what it
    returned, in the order of ``ids``, and how many failed (each said on stderr)."""
    progress = Progress(label, len(ids))
    gate = asyncio.Semaphore(max(1, concurrency))
    results: dict[str, R] = {}

    async def one(item: str) -> None:
        async with gate:
            try:
                results[item] = await act(item)
            except KeyturnError as exc:
                print(f"{item}: {exc}", file=sys.stderr)
                progress.tick(ok=False)
            else:
                progress.tick()

    await asyncio.gather(*(one(i) for i in ids))
    return [results[i] for i in ids if i in results], progress.failed


# --- keys and handles -----------------------------------------------------------------------

KEY_COLUMNS = ("ID", "TYPE", "ALGORITHM", "STATUS", "VERSION", "NEXT ROTATION", "EXPIRES", "OWNER")
HANDLE_COLUMNS = ("ID", "TYPE", "STATUS", "OWNER", "USES", "ROTATES", "EXPIRES", "GEN")


def key_row(k: resources_pb2.Key) -> list[object]:
    status = short_name(resources_pb2.KeyStatus, "KEY_STATUS", k.status).lower()
    rotates, expires = when(k.next_rotation_time), when(k.expire_time)
    return [k.id, k.type, k.algorithm, status, k.primary_version, rotates, expires, k.owner]


def key_details(key: resources_pb2.Key) -> None:
    table(KEY_COLUMNS, [key_row(key)])
    if key.metadata:
        print(f"metadata: {pairs(key.metadata)}")
    if key.HasField("destroy_time"):
        print(f"destruction: {when(key.destroy_time)}")
    print()
    rows = [
        [
            v.version,
            short_name(resources_pb2.KeyVersionState, "KEY_VERSION_STATE", v.state).lower(),
            when(v.create_time),
            when(v.expire_time),
            "*" if v.primary else "",
        ]
        for v in key.versions
    ]
    table(("VERSION", "STATE", "CREATED", "EXPIRES", "PRIMARY"), rows)


def handle_row(h: resources_pb2.Handle) -> list[object]:
    status = short_name(resources_pb2.HandleStatus, "HANDLE_STATUS", h.status).lower()
    uses = f"{h.usage_count}/{h.max_usage}"
    rotates, expires = when(h.rotate_time), when(h.expire_time)
    return [h.id, h.type, status, h.owner, uses, rotates, expires, h.generation]


def handle_details(handle: resources_pb2.Handle) -> None:
    table(HANDLE_COLUMNS, [handle_row(handle)])
    if handle.context:
        print(f"context: {pairs(handle.context)}")
    if handle.revoke_reason:
        print(f"revoked: {handle.revoke_reason}")


AUDIT_COLUMNS = ("SEQ", "TIME", "ACTION", "PRINCIPAL", "RESOURCE", "OUTCOME", "USER", "REASON")


def audit_row(e: admin_pb2.AuditEvent) -> list[object]:
    resource, user = e.resource_id or "-", e.user_id or "-"
    return [e.sequence, when(e.time), e.action, e.principal, resource, e.outcome, user, e.reason]


# --- configuration and health ---------------------------------------------------------------


def _key_type_row(name: str, t: admin_pb2.KeyTypeConfig) -> list[object]:
    exportable = "yes" if t.exportable else "no"
    windows = [span(t.rotation_interval), span(t.warning_threshold), span(t.max_lifetime)]
    return [name, t.algorithm, t.key_length, *windows, exportable]


def _handle_type_row(name: str, t: admin_pb2.HandleTypeConfig) -> list[object]:
    grace = span(t.grace_period) if t.HasField("grace_period") else "-"
    windows = [span(t.rotation_interval), span(t.warning_threshold), span(t.max_lifetime)]
    return [name, t.algorithm, t.handle_length, *windows, t.max_usage, grace]


def config_details(config: admin_pb2.Config) -> None:
    updated = f"updated {when(config.update_time)} by {config.updated_by or '-'}"
    print(f"revision {config.revision}, etag {config.etag}, {updated}\n")
    table(
        ("KEY TYPE", "ALGORITHM", "LENGTH", "ROTATION", "WARNING", "LIFETIME", "EXPORTABLE"),
        [_key_type_row(n, t) for n, t in sorted(config.key_types.items())],
    )
    print()
    table(
        ("HANDLE TYPE", "ALGORITHM", "LENGTH", "ROTATION", "WARNING", "LIFETIME", "USES", "GRACE"),
        [_handle_type_row(n, t) for n, t in sorted(config.handle_types.items())],
    )
    print()
    policies = json_format.MessageToDict(config.security_policies, preserving_proto_field_name=True)
    table(("POLICY", "VALUE"), [[k, json.dumps(v)] for k, v in sorted(policies.items())])


def serving(status: admin_pb2.ServingStatus.ValueType) -> str:
    return short_name(admin_pb2.ServingStatus, "SERVING_STATUS", status)


def health_details(health: admin_pb2.Health) -> None:
    print(f"{serving(health.status)}  keyturn {health.version}, up {span(health.uptime)}\n")
    rows = []
    for part in health.components:
        which = part.WhichOneof("detail")
        figures = (
            json_format.MessageToDict(getattr(part, which), preserving_proto_field_name=True)
            if which
            else {}
        )
        rows.append([part.name, serving(part.status), "; ".join(part.reasons) or pairs(figures)])
    table(("COMPONENT", "STATUS", "DETAIL"), rows)


# --- events ---------------------------------------------------------------------------------


def event_line(event: events_pb2.ExpiryEvent) -> str:
    """SEQUENCE TIME KIND SUBJECT and what else the event says, on one line."""
    kind = short_name(events_pb2.EventKind, "EVENT_KIND", event.kind)
    stamp = when(event.time)
    if event.kind in (events_pb2.EVENT_KIND_HEARTBEAT, events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE):
        return f"{'-':>6}  {stamp}  {kind:<17} latest {event.latest_sequence}"
    which = event.WhichOneof("subject")
    subject = getattr(event, which) if which else None
    described = f"{subject.id} ({subject.type})" if subject is not None else "-"
    extra = [f"deadline {when(event.deadline)}"] if event.HasField("deadline") else []
    if event.key_version:
        extra.append(f"version {event.key_version}")
    if event.HasField("anomaly"):
        extra.append(short_name(resources_pb2.AnomalyKind, "ANOMALY_KIND", event.anomaly.kind))
    if event.reason:
        extra.append(event.reason)
    if event.token:
        extra.append(f"token {event.token}")
    sequence = "snap" if event.snapshot else str(event.sequence)
    return f"{sequence:>6}  {stamp}  {kind:<17} {described}  {'  '.join(extra)}".rstrip()
