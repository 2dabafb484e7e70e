"""Proto3 JSON both ways for the transcoder: a request message from a route's path
variables, query parameters and body; a response message as JSON; a google.rpc.Status as
the JSON error body of AIP-193 with the standard gRPC -> HTTP status mapping.

Input accepts either field-name style (``key_id`` or ``keyId``), as proto3 JSON parsers
must; output is lowerCamelCase and prints fields that hold their default value, so that a
refused validation says ``"valid": false`` instead of leaving the field out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from keyturn_server.api.http import body_errors, codec, numerals, protojson
from keyturn_server.api.http.rules import Route
from keyturn_server.domain.errors import FieldViolation, InvalidArgument

#: google/rpc/code.proto documents the HTTP status of each code.
HTTP_STATUS: dict[int, int] = {
    grpc.StatusCode.OK.value[0]: 200,
    grpc.StatusCode.CANCELLED.value[0]: 499,
    grpc.StatusCode.UNKNOWN.value[0]: 500,
    grpc.StatusCode.INVALID_ARGUMENT.value[0]: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0]: 504,
    grpc.StatusCode.NOT_FOUND.value[0]: 404,
    grpc.StatusCode.ALREADY_EXISTS.value[0]: 409,
    grpc.StatusCode.PERMISSION_DENIED.value[0]: 403,
    grpc.StatusCode.UNAUTHENTICATED.value[0]: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: 429,
    grpc.StatusCode.FAILED_PRECONDITION.value[0]: 400,
    grpc.StatusCode.ABORTED.value[0]: 409,
    grpc.StatusCode.OUT_OF_RANGE.value[0]: 400,
    grpc.StatusCode.UNIMPLEMENTED.value[0]: 501,
    grpc.StatusCode.INTERNAL.value[0]: 500,
    grpc.StatusCode.UNAVAILABLE.value[0]: 503,
    grpc.StatusCode.DATA_LOSS.value[0]: 500,
}
CODE_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}

#: Well-known types whose JSON form is a string, so a query parameter can carry them.
_STRING_TYPES = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
}
#: Query parameters that are not request fields.
RESERVED_QUERY = frozenset({"access_token"})


def http_status(status: status_pb2.Status) -> int:
    return HTTP_STATUS.get(status.code, 500)


def error_document(status: status_pb2.Status, http: int | None = None) -> dict[str, Any]:
    """AIP-193: {"error": {"code": <HTTP status>, "message", "status": <code name>,
    "details": [google.rpc detail messages, with their "@type"]}}. ``http``: the status
    the answer is sent with, when it is not the code's own (405, or a parser's 4xx)."""
    error: dict[str, Any] = {
        "code": http or http_status(status),
        "message": status.message,
        "status": CODE_NAMES.get(status.code, "UNKNOWN"),
    }
    if status.details:
        error["details"] = [json_format.MessageToDict(detail) for detail in status.details]
    return {"error": error}


def reason_of(status: status_pb2.Status) -> str:
    """The ErrorInfo reason of ``status``, or ""."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def retry_after(status: status_pb2.Status) -> timedelta | None:
    """The RetryInfo delay of ``status``, for a Retry-After header."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay: timedelta = info.retry_delay.ToTimedelta()
            return delay
    return None


def to_json(message: Message) -> bytes:
    return codec.dumps(protojson.to_dict(message))


def request_from(
    route: Route,
    variables: dict[str, str],
    query: Iterable[tuple[str, str]],
    body: Any,
) -> Message:
    """The request message of ``route``. Raises InvalidArgument naming the field at fault."""
    message_type = route.method.input_type
    document: dict[str, Any]
    if route.body == "*":
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise InvalidArgument("the request body must be a JSON object", field="body")
        # Path variables are written into it; without any it is read as it is.
        document = dict(body) if variables else body
    else:
        document = {}
        if route.body:
            field = _field(message_type, route.body)
            assert field is not None
            if body is not None:
                document[field.name] = body
        elif body is not None:
            raise InvalidArgument(f"{route.verb} {route.template.text} takes no body", field="body")
    violations: list[FieldViolation] = []
    _check_base64(document, message_type, violations)
    if route.body != "*":
        _query_into(document, message_type, query, violations)
    for path, value in variables.items():
        _set_path(document, message_type, path, value, violations)
    if violations:
        raise InvalidArgument.of(violations)
    message: Message = route.request_class()
    try:
        protojson.parse_into(document, message)
    except json_format.ParseError:
        # Not json_format's words: they are Python's, name the request message and
        # quote what was sent (api/http/body_errors.py).
        raise InvalidArgument.of([body_errors.violation(document, message_type)]) from None
    return message


#: Base64 as proto3 JSON takes it: the standard or the URL-safe alphabet (not both),
#: padded to a multiple of four or not padded. json_format decodes as Python does, which
#: drops every other character and stops at the first padding: "aGk=EVIL" was "hi".
_BASE64 = re.compile(r"[A-Za-z0-9+/]*|[A-Za-z0-9_-]*")
#: Each request type's bytes fields, by either name (every one is top-level).
_BYTES: dict[str, dict[str, str]] = {}


def _check_base64(
    document: dict[str, Any], message_type: descriptor.Descriptor, violations: list[FieldViolation]
) -> None:
    fields = _BYTES.get(message_type.full_name)
    if fields is None:
        fields = _BYTES[message_type.full_name] = {
            name: field.name
            for field in message_type.fields
            if field.type == descriptor.FieldDescriptor.TYPE_BYTES and not field.is_repeated
            for name in (field.name, field.json_name)
        }
    for name in fields.keys() & document.keys():
        value = document[name]
        if isinstance(value, str) and not _is_base64(value):
            violations.append(
                FieldViolation(name, "must be base64 (standard or URL-safe, padded or not)")
            )


def _is_base64(text: str) -> bool:
    unpadded = text.rstrip("=")
    padding = len(text) - len(unpadded)
    if _BASE64.fullmatch(unpadded) is None or len(unpadded) % 4 == 1:
        return False
    return padding == 0 or (padding <= 2 and len(text) % 4 == 0)


def _field(message_type: descriptor.Descriptor, name: str) -> descriptor.FieldDescriptor | None:
    """A field by its proto name or its JSON name."""
    return message_type.fields_by_name.get(name) or message_type.fields_by_camelcase_name.get(name)


def _set_path(
    document: dict[str, Any],
    message_type: descriptor.Descriptor,
    path: str,
    value: Any,
    violations: list[FieldViolation],
    repeated_ok: bool = False,
) -> None:
    """document[a][b] = value for the field path "a.b", by proto names; a path variable
    replaces the same field sent in the body under either name."""
    parts = path.split(".")
    target = document
    current = message_type
    for index, part in enumerate(parts):
        field = _field(current, part)
        if field is None:
            violations.append(FieldViolation(path, "no such field"))
            return
        if field.json_name != field.name and field.json_name in target:
            # One spelling per field: proto3 JSON parsers refuse a field given twice.
            target.setdefault(field.name, target.pop(field.json_name))
        last = index == len(parts) - 1
        if not last:
            if field.message_type is None or _is_repeated(field):
                violations.append(FieldViolation(path, "not a message field"))
                return
            nested = target.setdefault(field.name, {})
            if not isinstance(nested, dict):
                violations.append(FieldViolation(path, "not a message field"))
                return
            target, current = nested, field.message_type
            continue
        converted = _scalar(field, value, path, violations)
        if converted is _INVALID:
            return
        if _is_repeated(field):
            if not repeated_ok:
                target[field.name] = [converted]
            else:
                existing = target.get(field.name)
                if not isinstance(existing, list):
                    existing = target[field.name] = []
                existing.append(converted)
        else:
            target[field.name] = converted


_INVALID = object()
#: A whole number as a path or query spells it: no sign but a minus, no leading zero.
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)")
_F = descriptor.FieldDescriptor
_RANGES = {
    **dict.fromkeys((_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32), numerals.INT32),
    **dict.fromkeys((_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64), numerals.INT64),
    **dict.fromkeys((_F.TYPE_UINT32, _F.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((_F.TYPE_UINT64, _F.TYPE_FIXED64), (0, 2**64 - 1)),
}


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _scalar(
    field: descriptor.FieldDescriptor, value: str, path: str, violations: list[FieldViolation]
) -> Any:
    """A query or path string as the JSON value proto3 JSON expects for ``field``."""
    kind = field.type
    if field.message_type is not None:
        if field.message_type.GetOptions().map_entry:
            violations.append(FieldViolation(path, "a map cannot be given as a parameter"))
            return _INVALID
        if field.message_type.full_name not in _STRING_TYPES and not (
            field.message_type.full_name.startswith("google.protobuf.")
            and field.message_type.full_name.endswith("Value")
        ):
            violations.append(FieldViolation(path, "a message cannot be given as a parameter"))
            return _INVALID
        return value
    if kind == descriptor.FieldDescriptor.TYPE_BOOL:
        lowered = value.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        violations.append(FieldViolation(path, "must be true or false"))
        return _INVALID
    if kind in (descriptor.FieldDescriptor.TYPE_DOUBLE, descriptor.FieldDescriptor.TYPE_FLOAT):
        try:
            return float(value)
        except ValueError:
            violations.append(FieldViolation(path, "must be a number"))
            return _INVALID
    if kind in protojson.INTEGER_TYPES:
        # json_format reads the text with int(), which takes "٣" for 3, and then as a
        # float: "1.0", "1e3" and "01" were versions 1, 1000 and 1. A path or a query
        # spells a number one way, in decimal digits (grpc-gateway and ESP refuse the
        # rest too); its range is the field's.
        low, high = _RANGES[kind]
        if _DECIMAL.fullmatch(value) is None or numerals.integer(value, low, high) is None:
            violations.append(
                FieldViolation(
                    path, f"must be a whole number from {low} to {high} in decimal digits"
                )
            )
            return _INVALID
        return value
    enum = field.enum_type
    if enum is not None and value not in enum.values_by_name:
        # json_format would take any text int() reads as a number, "٣" among them.
        number = numerals.integer(value, *numerals.INT32)
        if number is None:
            names = ", ".join(v.name for v in enum.values)
            violations.append(FieldViolation(path, f"must be one of {names}, or a number"))
            return _INVALID
        return number
    return value


def _query_into(
    document: dict[str, Any],
    message_type: descriptor.Descriptor,
    query: Iterable[tuple[str, str]],
    violations: list[FieldViolation],
) -> None:
    for name, value in query:
        if name in RESERVED_QUERY:
            continue
        _set_path(document, message_type, name, value, violations, repeated_ok=True)
