"""What is wrong with a JSON request that proto3's JSON mapping refuses: said on the field
at fault, in the API's words.

json_format's ParseError text used to reach the caller whole, as a violation on "body":
Python's own words ("expected string or bytes-like object, got 'int'", "unsupported
operand type(s) for +", "invalid literal for int() with base 10"), the request message's
name, and a repr of up to 300 characters of what was sent. Here the document is walked
along the message's descriptor to the first member that json_format refuses; the
violation names its path, as the caller spelled it, and what that field takes. What was
sent is never quoted, but for a clipped unknown member name.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor, json_format, message_factory

from keyturn_server.api.http import protojson
from keyturn_server.domain.errors import FieldViolation
from keyturn_server.domain.limits import clip

_F = descriptor.FieldDescriptor
#: What a well-known message type takes in JSON.
_WELL_KNOWN = {
    "google.protobuf.Timestamp": "an RFC 3339 time such as 2026-01-01T00:00:00Z",
    "google.protobuf.Duration": 'a duration in seconds such as "3.5s"',
    "google.protobuf.FieldMask": "a comma-separated list of field paths",
}


def violation(
    document: Any, message_type: descriptor.Descriptor, prefix: str = ""
) -> FieldViolation:
    """The first member of ``document`` that json_format refuses for ``message_type``
    (``prefix``: the path of the message it sits in)."""
    if not isinstance(document, dict):
        return FieldViolation(prefix.rstrip(".") or "body", "must be a JSON object")
    for key, value in document.items():
        path = prefix + clip(str(key))
        field = message_type.fields_by_name.get(key) or message_type.fields_by_camelcase_name.get(
            key
        )
        if field is None:
            return FieldViolation(path, "no such field")
        if _accepted(message_type, key, value):
            continue
        nested = field.message_type
        if (
            nested is not None
            and not nested.GetOptions().map_entry
            and nested.full_name not in _WELL_KNOWN
            and not nested.full_name.startswith("google.protobuf.")
            and not field.is_repeated
            and isinstance(value, dict)
        ):
            return violation(value, nested, path + ".")
        return FieldViolation(path, f"must be {_takes(field)}")
    # Each member passes alone: a field given twice (under both its names), or one of a
    # oneof given with another.
    return FieldViolation(prefix.rstrip(".") or "body", "fields conflict (given twice, or a oneof)")


def _accepted(message_type: descriptor.Descriptor, key: str, value: Any) -> bool:
    try:
        json_format.ParseDict({key: value}, message_factory.GetMessageClass(message_type)())
    except (json_format.ParseError, ValueError, TypeError, AttributeError):
        return False
    return True


def _takes(field: descriptor.FieldDescriptor) -> str:
    nested = field.message_type
    if nested is not None and nested.GetOptions().map_entry:
        return f"an object whose values are {_kind(nested.fields_by_name['value'])}"
    if field.is_repeated:
        return f"a list of {_kind(field)}"
    return _kind(field)


def _kind(field: descriptor.FieldDescriptor) -> str:
    kind = field.type
    if field.message_type is not None:
        return _WELL_KNOWN.get(field.message_type.full_name, "a JSON object")
    if field.enum_type is not None:
        return f"a {field.enum_type.name} name or number"
    if kind == _F.TYPE_BOOL:
        return "true or false"
    if kind == _F.TYPE_STRING:
        return "a string"
    if kind == _F.TYPE_BYTES:
        return "base64 text"
    if kind in protojson.INTEGERS:
        return "a whole number"
    return "a number"
