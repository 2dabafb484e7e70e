"""The specification's JSON shapes, both ways.

Out: any Keyturn message as the plain JSON a JavaScript client expects: lowerCamelCase
names, numbers for 64-bit integers, ISO-8601 times, durations in milliseconds (as the
specification's configuration has them), enum values as short lowercase names
("KEY_STATUS_ACTIVE" -> "active"), and every scalar present even at its default.

In: the specification's request bodies (``userId``, ``handleId``, ``context.userAgent``,
configuration types with millisecond durations) into Keyturn's request messages. A
value of the wrong JSON type is INVALID_ARGUMENT naming the field, never a 500.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import descriptor, duration_pb2
from google.protobuf.message import Message

from keyturn.v1 import admin_pb2
from keyturn_server.api.http import printers
from keyturn_server.domain.errors import FieldViolation, InvalidArgument

_F = descriptor.FieldDescriptor
#: Context keys the specification spells in camelCase, and Keyturn's names for them.
_CONTEXT_NAMES = {"userAgent": "user_agent"}
MAX_MILLISECONDS = 10 * 365 * 24 * 3600 * 1000


# --- out ---------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    """JavaScript's Date.toISOString(): milliseconds and a Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def plain(message: Message) -> dict[str, Any]:
    fast = _FAST.get(message.DESCRIPTOR.full_name)
    if fast is not None:
        return fast(message)
    return generic_plain(message)


def generic_plain(message: Message) -> dict[str, Any]:
    """``plain`` by walking the descriptor, without the hand-built printers (their
    reference in tests)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.is_repeated:
            value = getattr(message, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                out[field.json_name] = {str(k): _value(value_field, v) for k, v in value.items()}
            else:
                out[field.json_name] = [_value(field, v) for v in value]
            continue
        if field.has_presence and not message.HasField(field.name):
            continue
        converted = _value(field, getattr(message, field.name))
        if converted is not None:
            out[field.json_name] = converted
    return out


def _value(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            if not value.seconds and not value.nanos:
                return None
            return printers.timestamp_iso(value.seconds, value.nanos)
        if name == "google.protobuf.Duration":
            return milliseconds(value.ToTimedelta())
        return plain(value)
    if field.type == _F.TYPE_ENUM:
        return short_enum(field.enum_type, value)
    if field.type == _F.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value


#: Hand-built printers of the hottest messages (api/http/printers.py), by full name.
_FAST = printers.plain_printers(lambda m: plain(m))


def milliseconds(delta: timedelta) -> int | float:
    ms = delta / timedelta(milliseconds=1)
    return int(ms) if ms == int(ms) else ms


def short_enum(enum: Any, number: int) -> str | None:
    """KEY_STATUS_ACTIVE -> "active"; the zero value (UNSPECIFIED) -> None."""
    if number == 0 or number not in enum.values_by_number:
        return None
    prefix = str(enum.values_by_number[0].name).removesuffix("UNSPECIFIED")
    return str(enum.values_by_number[number].name).removeprefix(prefix).lower()


def enum_number(enum: Any, text: str, field: str) -> int:
    """ "active" (or "ACTIVE", or the full name) -> its number; unknown -> 400."""
    prefix = enum.values_by_number[0].name.removesuffix("UNSPECIFIED")
    name = text.strip().upper()
    value = enum.values_by_name.get(name) or enum.values_by_name.get(prefix + name)
    if value is None or value.number == 0:
        allowed = ", ".join(
            v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0
        )
        raise InvalidArgument(f"{text!r} is not one of: {allowed}", field=field)
    return int(value.number)


# --- in ----------------------------------------------------------------------------


def body_object(body: Any) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object", field="body")
    return body


def text_field(body: Mapping[str, Any], name: str, required: bool = False) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidArgument("required", field=name)
        return ""
    if not isinstance(value, str):
        raise InvalidArgument("must be a string", field=name)
    return value


def string_map(body: Mapping[str, Any], name: str, rename: bool = False) -> dict[str, str]:
    """An object of strings (numbers and booleans are taken as their text)."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument("must be an object of strings", field=name)
    out: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, int | float):
            item = str(item)
        if not isinstance(item, str):
            raise InvalidArgument("must be a string", field=f"{name}.{key}")
        entry = str(key)
        out[_CONTEXT_NAMES.get(entry, entry) if rename else entry] = item
    return out


def _ms(value: Any, field: str, violations: list[FieldViolation]) -> duration_pb2.Duration | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        violations.append(FieldViolation(field, "must be a number of milliseconds"))
        return None
    if not 0 <= value <= MAX_MILLISECONDS:
        violations.append(FieldViolation(field, f"must be between 0 and {MAX_MILLISECONDS}"))
        return None
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(milliseconds=value))
    return duration


def _count(value: Any, field: str, violations: list[FieldViolation]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        violations.append(FieldViolation(field, "must be a whole number from 0 to 2^32-1"))
        return None
    return value


_TYPE_FIELDS = {
    "algorithm": "text",
    "rotationInterval": "ms",
    "warningThreshold": "ms",
    "maxLifetime": "ms",
}
_KEY_TYPE_FIELDS = {**_TYPE_FIELDS, "keyLength": "count", "exportable": "bool"}
_HANDLE_TYPE_FIELDS = {
    **_TYPE_FIELDS,
    "handleLength": "count",
    "maxUsage": "count",
    "gracePeriod": "ms",
}
_POLICY_FIELDS = {
    "preventReuse": "bool",
    "enforceRotation": "bool",
    "trackUsage": "bool",
    "anomalyDetection": "bool",
    "rateLimitPerHandle": "count",
    "maxConcurrentHandles": "count",
    "revokeOn": "kinds",
}


def config_update(body: Mapping[str, Any]) -> tuple[admin_pb2.Config, list[str]]:
    """PUT /config: the types and policies given, and the update_mask that merges exactly
    those into the stored configuration (other types and policies stay as they are)."""
    config = admin_pb2.Config()
    mask: list[str] = []
    violations: list[FieldViolation] = []
    for json_name, proto_name, fields in (
        ("keyTypes", "key_types", _KEY_TYPE_FIELDS),
        ("handleTypes", "handle_types", _HANDLE_TYPE_FIELDS),
    ):
        types = body.get(json_name)
        if types is None:
            continue
        if not isinstance(types, dict):
            violations.append(FieldViolation(json_name, "must be an object of types"))
            continue
        for type_name, settings in types.items():
            where = f"{json_name}.{type_name}"
            if not isinstance(settings, dict):
                violations.append(FieldViolation(where, "must be an object"))
                continue
            target = getattr(config, proto_name)[type_name]
            _fill(target, settings, fields, where, violations)
            mask.append(f"{proto_name}.{type_name}")
    policies = body.get("securityPolicies")
    if policies is not None:
        if not isinstance(policies, dict):
            violations.append(FieldViolation("securityPolicies", "must be an object"))
        else:
            _fill(
                config.security_policies, policies, _POLICY_FIELDS, "securityPolicies", violations
            )
            mask.extend(
                f"security_policies.{config.security_policies.DESCRIPTOR.fields_by_camelcase_name[k].name}"
                for k in policies
                if k in _POLICY_FIELDS
            )
    if violations:
        raise InvalidArgument.of(violations)
    if not mask:
        raise InvalidArgument(
            "give keyTypes, handleTypes or securityPolicies to change", field="body"
        )
    return config, mask


def _fill(
    target: Message,
    given: Mapping[str, Any],
    fields: Mapping[str, str],
    where: str,
    violations: list[FieldViolation],
) -> None:
    for key, value in given.items():
        field = f"{where}.{key}"
        kind = fields.get(key)
        if kind is None:
            violations.append(FieldViolation(field, f"unknown; expected one of {sorted(fields)}"))
            continue
        proto_name = target.DESCRIPTOR.fields_by_camelcase_name[key].name
        if kind == "text":
            if not isinstance(value, str):
                violations.append(FieldViolation(field, "must be a string"))
            else:
                setattr(target, proto_name, value)
        elif kind == "bool":
            if not isinstance(value, bool):
                violations.append(FieldViolation(field, "must be true or false"))
            else:
                setattr(target, proto_name, value)
        elif kind == "ms":
            duration = _ms(value, field, violations)
            if duration is not None:
                getattr(target, proto_name).CopyFrom(duration)
        elif kind == "count":
            count = _count(value, field, violations)
            if count is not None:
                setattr(target, proto_name, count)
        elif kind == "kinds":
            _kinds(target, proto_name, value, field, violations)


def _kinds(
    target: Message, proto_name: str, value: Any, field: str, violations: list[FieldViolation]
) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        violations.append(FieldViolation(field, "must be a list of anomaly kinds"))
        return
    enum = target.DESCRIPTOR.fields_by_name[proto_name].enum_type
    try:
        getattr(target, proto_name).extend(enum_number(enum, v, field) for v in value)
    except InvalidArgument as exc:
        violations.extend(exc.violations)
