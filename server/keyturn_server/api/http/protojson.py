"""Proto3 JSON, fast where the transcoder spends its time.

``json_format`` walks every field through generic code on every call; under load that was
a third of the listener's time per ValidateHandle (py-spy). Here each message type gets a
plan once (its fields, their JSON names and converters), and the printer follows it. The
output is exactly ``json_format.MessageToDict(m, always_print_fields_with_no_presence=True)``
(tests/test_http_protojson.py compares them on every message type); well-known types other
than Timestamp and Duration, and anything unusual, go to json_format itself.

Input has a fast path too, for bodies of plain strings, booleans, small integers and
string maps (a validation, a key or handle to generate); anything else, and every
mistake, goes through ``json_format.ParseDict`` with its error messages.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

from keyturn_server.api.http import printers

_F = descriptor.FieldDescriptor
_INT64 = {_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64, _F.TYPE_UINT64, _F.TYPE_FIXED64}
_INT32 = {_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32, _F.TYPE_UINT32, _F.TYPE_FIXED32}
#: Every whole-number field type (JSON takes 64-bit ones as strings too).
INTEGERS = frozenset(_INT32 | _INT64)
INTEGER_TYPES = frozenset(_INT64 | _INT32)
_STRING_WKT = {"google.protobuf.Timestamp", "google.protobuf.Duration"}

Convert = Callable[[Any], Any]
#: (proto name, JSON name, converter, always printed, repeated kind: "" | "list" | "map")
_Step = tuple[str, str, Convert, bool, str]
#: None: a message type with a field kind the plans do not cover (json_format prints it).
_PLANS: dict[str, list[_Step] | None] = {}


#: Hand-built printers of the hottest messages (printers.py), by full name.
_FAST = printers.proto_json_printers(lambda m: to_dict(m))


class _Unplanned(Exception):
    """A field kind without a fast converter (float32)."""


def to_dict(message: Message) -> dict[str, Any]:
    """As MessageToDict(message, always_print_fields_with_no_presence=True)."""
    name = message.DESCRIPTOR.full_name
    fast = _FAST.get(name)
    if fast is not None:
        return fast(message)
    return planned_dict(message)


def planned_dict(message: Message) -> dict[str, Any]:
    """``to_dict`` by the message type's plan, without the hand-built printers (their
    reference in tests)."""
    name = message.DESCRIPTOR.full_name
    if name not in _PLANS:
        try:
            _PLANS[name] = (
                None if name.startswith("google.protobuf.") else _plan(message.DESCRIPTOR)
            )
        except _Unplanned:
            _PLANS[name] = None
    plan = _PLANS[name]
    if plan is None:
        document: dict[str, Any] = json_format.MessageToDict(
            message, always_print_fields_with_no_presence=True
        )
        return document
    out: dict[str, Any] = {}
    for proto_name, json_name, convert, always, repeated in plan:
        if repeated == "list":
            out[json_name] = [convert(v) for v in getattr(message, proto_name)]
        elif repeated == "map":
            out[json_name] = {
                _map_key(k): convert(v) for k, v in getattr(message, proto_name).items()
            }
        elif always or message.HasField(proto_name):
            out[json_name] = convert(getattr(message, proto_name))
    return out


def _plan(message_type: Any) -> list[_Step]:
    steps: list[_Step] = []
    for field in message_type.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            steps.append((field.name, field.json_name, _converter(value_field), True, "map"))
        elif field.is_repeated:
            steps.append((field.name, field.json_name, _converter(field), True, "list"))
        else:
            steps.append(
                (field.name, field.json_name, _converter(field), not field.has_presence, "")
            )
    return steps


def _converter(field: descriptor.FieldDescriptor) -> Convert:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return _timestamp
        if field.message_type.full_name in _STRING_WKT:
            return _to_json_string
        return to_dict
    kind = field.type
    if kind in _INT64:
        return str
    if kind in _INT32 or kind in (_F.TYPE_BOOL, _F.TYPE_STRING):
        return _same
    if kind == _F.TYPE_BYTES:
        return _bytes
    if kind == _F.TYPE_DOUBLE:
        return _double
    if kind == _F.TYPE_ENUM:
        assert field.enum_type is not None
        names = {v.number: v.name for v in field.enum_type.values}
        return lambda number: names.get(number, number)
    raise _Unplanned(field.full_name)


def _same(value: Any) -> Any:
    return value


def _timestamp(value: Any) -> str:
    return printers.timestamp_text(value.seconds, value.nanos)


def _to_json_string(value: Any) -> str:
    text: str = value.ToJsonString()
    return text


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _double(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


# --- input -------------------------------------------------------------------------

_SIMPLE_KINDS = {_F.TYPE_STRING: str, _F.TYPE_BOOL: bool}
#: Fields a plain JSON value may fill directly: (setter kind, field) by both names.
_INPUT: dict[str, dict[str, tuple[str, descriptor.FieldDescriptor]]] = {}


def parse_into(document: dict[str, Any], message: Message) -> None:
    """As json_format.ParseDict(document, message), faster for plain bodies."""
    fields = _INPUT.get(message.DESCRIPTOR.full_name)
    if fields is None:
        fields = _INPUT[message.DESCRIPTOR.full_name] = _input_plan(message.DESCRIPTOR)
    seen: set[str] = set()
    for key, value in document.items():
        found = fields.get(key)
        if found is None or found[1].name in seen or not _fits(found[0], value):
            # From the start: what was set so far is set again to the same values.
            json_format.ParseDict(document, message)
            return
        kind, field = found
        seen.add(field.name)
        if kind == "map":
            getattr(message, field.name).update(value)
        else:
            setattr(message, field.name, value)


def _input_plan(
    message_type: Any,
) -> dict[str, tuple[str, descriptor.FieldDescriptor]]:
    plan: dict[str, tuple[str, descriptor.FieldDescriptor]] = {}
    for field in message_type.fields:
        kind = ""
        if field.message_type is not None:
            entry = field.message_type
            if (
                entry.GetOptions().map_entry
                and entry.fields_by_name["key"].type == _F.TYPE_STRING
                and entry.fields_by_name["value"].type == _F.TYPE_STRING
            ):
                kind = "map"
        elif not field.is_repeated and field.type in _SIMPLE_KINDS:
            kind = "string" if field.type == _F.TYPE_STRING else "bool"
        elif not field.is_repeated and field.type in (_F.TYPE_INT32, _F.TYPE_UINT32):
            kind = "int32" if field.type == _F.TYPE_INT32 else "uint32"
        if kind:
            plan[field.name] = plan[field.json_name] = (kind, field)
    return plan


def _fits(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "map":
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    if kind == "int32":
        return -(2**31) <= value < 2**31
    return 0 <= value < 2**32
