"""The transcoder's fast proto3 JSON is json_format's, exactly: every message type of the
API, filled at random (seeded), printed both ways; bodies parsed both ways."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from google.protobuf import descriptor, json_format, message_factory
from google.protobuf.message import Message

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2, resources_pb2, statistics_pb2
from keyturn_server.api.http.protojson import parse_into, to_dict

_F = descriptor.FieldDescriptor
FILES = (admin_pb2, events_pb2, handles_pb2, keys_pb2, resources_pb2, statistics_pb2)


def message_types() -> list[descriptor.Descriptor]:
    found: list[descriptor.Descriptor] = []

    def walk(message_type: descriptor.Descriptor) -> None:
        if not message_type.GetOptions().map_entry:
            found.append(message_type)
        for nested in message_type.nested_types:
            walk(nested)

    for module in FILES:
        for message_type in module.DESCRIPTOR.message_types_by_name.values():
            walk(message_type)
    return found


def scalar(field: descriptor.FieldDescriptor, rng: random.Random) -> Any:
    kind = field.type
    if kind == _F.TYPE_STRING:
        return rng.choice(["", "a", "hdl_x", "é ünïcode", "x" * 40])
    if kind == _F.TYPE_BYTES:
        return rng.randbytes(rng.randrange(0, 20))
    if kind == _F.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == _F.TYPE_DOUBLE:
        return rng.choice([0.0, 1.5, -2.25, float("nan"), float("inf"), float("-inf"), 1e300])
    if kind == _F.TYPE_ENUM:
        assert field.enum_type is not None
        return rng.choice([v.number for v in field.enum_type.values] + [99])
    if kind in (_F.TYPE_UINT32, _F.TYPE_FIXED32):
        return rng.choice([0, 1, 2**32 - 1])
    if kind in (_F.TYPE_UINT64, _F.TYPE_FIXED64):
        return rng.choice([0, 1, 2**64 - 1])
    if kind in (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64):
        return rng.choice([0, -1, 2**63 - 1, -(2**63)])
    return rng.choice([0, -1, 2**31 - 1])


def fill(message: Message, rng: random.Random, depth: int = 0) -> None:
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        name = field.message_type.full_name if field.message_type else ""
        if name == "google.protobuf.Timestamp":
            getattr(message, field.name).FromSeconds(rng.randrange(0, 4_000_000_000))
            getattr(message, field.name).nanos = rng.choice([0, 5_000_000, 123_456_789])
        elif name == "google.protobuf.Duration":
            getattr(message, field.name).FromNanoseconds(rng.randrange(0, 10**13))
        elif name == "google.protobuf.FieldMask":
            getattr(message, field.name).paths.extend(["a.b", "c"])
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            target = getattr(message, field.name)
            for key in ("k1", "k2")[: rng.randrange(0, 3)]:
                if value_field.message_type is not None:
                    if depth < 2:
                        fill(target[key], rng, depth + 1)
                else:
                    target[key] = scalar(value_field, rng)
        elif field.message_type is not None:
            if depth >= 3:
                continue
            if field.is_repeated:
                for _ in range(rng.randrange(0, 3)):
                    fill(getattr(message, field.name).add(), rng, depth + 1)
            else:
                fill(getattr(message, field.name), rng, depth + 1)
                getattr(message, field.name).SetInParent()
        elif field.is_repeated:
            getattr(message, field.name).extend(scalar(field, rng) for _ in range(2))
        else:
            setattr(message, field.name, scalar(field, rng))


def reference(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


@pytest.mark.parametrize("message_type", message_types(), ids=lambda t: t.full_name)
def test_the_printer_is_json_format(message_type: descriptor.Descriptor) -> None:
    cls = message_factory.GetMessageClass(message_type)
    for seed in range(12):
        message = cls()
        fill(message, random.Random(seed))
        assert to_dict(message) == reference(message), (seed, message)


@pytest.mark.parametrize(
    "document",
    [
        {"token": "kt_x", "context": {"ip": "1.2.3.4", "user_agent": "a"}, "userId": "u"},
        {"token": "kt_x", "user_id": "u"},
        {"token": 5},
        {"token": None},
        {"context": {"ip": 5}},
        {"nope": "x"},
        {"token": "a", "userId": "u", "user_id": "v"},
    ],
)
def test_the_parser_is_json_format(document: dict[str, Any]) -> None:
    fast, slow = handles_pb2.ValidateHandleRequest(), handles_pb2.ValidateHandleRequest()
    try:
        json_format.ParseDict(document, slow)
    except json_format.ParseError as exc:
        with pytest.raises(json_format.ParseError, match=re.escape(str(exc)[:20])):
            parse_into(document, fast)
        return
    parse_into(document, fast)
    assert fast == slow


@pytest.mark.parametrize(
    ("message_type", "document"),
    [
        (keys_pb2.GenerateKeyRequest, {"type": "api", "metadata": {"a": "b"}, "reveal": True}),
        (keys_pb2.ListKeysRequest, {"pageSize": 5, "status": "KEY_STATUS_ACTIVE"}),
        (keys_pb2.ListKeysRequest, {"pageSize": 2**31}),
        (keys_pb2.ExportKeyRequest, {"version": -1}),
        (keys_pb2.ExportKeyRequest, {"version": True}),
        (keys_pb2.EncryptRequest, {"keyId": "k", "plaintext": "aGk="}),
    ],
)
def test_the_parser_is_json_format_for_other_requests(
    message_type: Any, document: dict[str, Any]
) -> None:
    fast, slow = message_type(), message_type()
    try:
        json_format.ParseDict(document, slow)
    except json_format.ParseError:
        with pytest.raises(json_format.ParseError):
            parse_into(document, fast)
        return
    parse_into(document, fast)
    assert fast == slow
