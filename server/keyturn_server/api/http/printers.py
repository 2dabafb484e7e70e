"""Hand-built JSON for the answers the listener prints most: a validation, for ``/v1``
(proto3 JSON) and for the specification's API (its plain shape).

The generic printers (``protojson.to_dict``, ``compat.shapes.plain``) walk every field
through a converter on every call; for one ValidateHandle answer that was 15-20 µs, more
than a tenth of the request. These build the same dictionary field by field, and cache
the text of timestamps (a handle's expiry and rotation times repeat on every validation
of it).

They can only be used while they match: each is registered only if the message's fields
are exactly those it was written for (a field added to the proto sends the message back
to the generic printer until this module learns it), and tests/test_http_printers.py
compares both ways on random messages, byte for byte once printed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from functools import lru_cache
from typing import Any

from google.protobuf import descriptor, timestamp_pb2

from keyturn.v1 import handles_pb2

Printer = Callable[[Any], dict[str, Any]]

_F = descriptor.FieldDescriptor
#: The fields the Validation printers were written for: name, kind, repeated.
_VALIDATION_FIELDS = (
    ("valid", _F.TYPE_BOOL, False),
    ("reason", _F.TYPE_ENUM, False),
    ("handle_id", _F.TYPE_STRING, False),
    ("remaining_uses", _F.TYPE_UINT64, False),
    ("expire_time", _F.TYPE_MESSAGE, False),
    ("rotate_time", _F.TYPE_MESSAGE, False),
    ("rotated", _F.TYPE_BOOL, False),
    ("anomalies", _F.TYPE_MESSAGE, True),
    ("type", _F.TYPE_STRING, False),
    ("owner", _F.TYPE_STRING, False),
)
_REASONS = {v.number: v.name for v in handles_pb2.ValidationReason.DESCRIPTOR.values}
_REASON_PREFIX = "VALIDATION_REASON_"


def _fields_are(
    message_type: descriptor.Descriptor, fields: tuple[tuple[str, int, bool], ...]
) -> bool:
    return tuple((f.name, f.type, bool(f.is_repeated)) for f in message_type.fields) == fields


@lru_cache(maxsize=4096)
def timestamp_text(seconds: int, nanos: int) -> str:
    """A Timestamp's proto3 JSON text (``ToJsonString``), remembered."""
    text: str = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos).ToJsonString()
    return text


@lru_cache(maxsize=4096)
def timestamp_iso(seconds: int, nanos: int) -> str:
    """A Timestamp as the specification's API prints it (``shapes.iso``), remembered."""
    moment = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos).ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def validation_json(v: Any, anomaly: Printer) -> dict[str, Any]:
    """``protojson.to_dict`` of a Validation; ``anomaly`` prints each Anomaly (rare)."""
    out: dict[str, Any] = {
        "valid": v.valid,
        "reason": _REASONS.get(v.reason, v.reason),
        "handleId": v.handle_id,
        "remainingUses": str(v.remaining_uses),
    }
    if v.HasField("expire_time"):
        t = v.expire_time
        out["expireTime"] = timestamp_text(t.seconds, t.nanos)
    if v.HasField("rotate_time"):
        t = v.rotate_time
        out["rotateTime"] = timestamp_text(t.seconds, t.nanos)
    out["rotated"] = v.rotated
    out["anomalies"] = [anomaly(a) for a in v.anomalies] if v.anomalies else []
    out["type"] = v.type
    out["owner"] = v.owner
    return out


def validation_plain(v: Any, anomaly: Printer) -> dict[str, Any]:
    """``shapes.plain`` of a Validation; ``anomaly`` prints each Anomaly (rare)."""
    out: dict[str, Any] = {"valid": v.valid}
    reason = v.reason
    if reason in _REASONS and reason != 0:
        out["reason"] = _REASONS[reason].removeprefix(_REASON_PREFIX).lower()
    out["handleId"] = v.handle_id
    out["remainingUses"] = v.remaining_uses
    if v.HasField("expire_time"):
        t = v.expire_time
        if t.seconds or t.nanos:
            out["expireTime"] = timestamp_iso(t.seconds, t.nanos)
    if v.HasField("rotate_time"):
        t = v.rotate_time
        if t.seconds or t.nanos:
            out["rotateTime"] = timestamp_iso(t.seconds, t.nanos)
    out["rotated"] = v.rotated
    out["anomalies"] = [anomaly(a) for a in v.anomalies] if v.anomalies else []
    out["type"] = v.type
    out["owner"] = v.owner
    return out


def proto_json_printers(generic: Printer) -> dict[str, Printer]:
    """Fast proto3 JSON printers by message full name, for those still in step with
    their protos; ``generic`` prints everything else (nested messages too)."""
    found: dict[str, Printer] = {}
    validation = handles_pb2.Validation.DESCRIPTOR
    if _fields_are(validation, _VALIDATION_FIELDS):
        found[validation.full_name] = lambda v: validation_json(v, generic)
    return found


def plain_printers(generic: Printer) -> dict[str, Printer]:
    """As ``proto_json_printers``, for the specification's plain shape."""
    found: dict[str, Printer] = {}
    validation = handles_pb2.Validation.DESCRIPTOR
    if _fields_are(validation, _VALIDATION_FIELDS):
        found[validation.full_name] = lambda v: validation_plain(v, generic)
    return found
