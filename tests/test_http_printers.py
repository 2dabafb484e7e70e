"""The hand-built printers of api/http/printers.py are the generic ones, exactly: random
messages (hypothesis, drawn from the descriptors, so a field added to a proto is drawn
too) printed both ways must give the same bytes, for /v1 (proto3 JSON, and json_format
as the reference of that) and for the specification's API (its plain shape)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from google.protobuf import descriptor, json_format, message_factory, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyturn.v1 import handles_pb2
from keyturn_server.api.http import codec, printers, protojson
from keyturn_server.api.http.compat import shapes

_F = descriptor.FieldDescriptor
#: The range of a valid Timestamp (0001-01-01 to 9999-12-31).
_SECONDS = st.integers(-62_135_596_800, 253_402_300_799)
_NANOS = st.sampled_from([0, 1, 999, 1_000, 5_000_000, 123_456_789, 999_999_999]) | st.integers(
    0, 999_999_999
)
_TEXT = st.text(max_size=12)


def _scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == _F.TYPE_STRING:
        return _TEXT
    if kind == _F.TYPE_BYTES:
        return st.binary(max_size=12)
    if kind == _F.TYPE_BOOL:
        return st.booleans()
    if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return st.floats(width=32 if kind == _F.TYPE_FLOAT else 64)
    if kind == _F.TYPE_ENUM:
        assert field.enum_type is not None
        # Numbers the enum does not name too: a newer server's reasons, as a client sees.
        return st.sampled_from([v.number for v in field.enum_type.values]) | st.integers(0, 99)
    if kind in (_F.TYPE_UINT32, _F.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (_F.TYPE_UINT64, _F.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind in (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1)
    return st.integers(-(2**31), 2**31 - 1)


@st.composite
def messages(draw: st.DrawFn, message_type: descriptor.Descriptor, depth: int = 0) -> Message:
    """A message of ``message_type`` with a random subset of its fields set."""
    message: Message = message_factory.GetMessageClass(message_type)()
    for field in message_type.fields:
        if not draw(st.booleans()):
            continue
        inner = field.message_type
        if inner is not None and inner.full_name == "google.protobuf.Timestamp":
            target = getattr(message, field.name)
            target.seconds, target.nanos = draw(_SECONDS), draw(_NANOS)
            target.SetInParent()  # an explicit 1970-01-01T00:00:00Z too
        elif inner is not None and inner.GetOptions().map_entry:
            value_field = inner.fields_by_name["value"]
            getattr(message, field.name).update(
                draw(st.dictionaries(_TEXT, _scalar(value_field), max_size=3))
            )
        elif inner is not None:
            if depth >= 2:
                continue
            if field.is_repeated:
                for item in draw(st.lists(messages(inner, depth + 1), max_size=2)):
                    getattr(message, field.name).add().CopyFrom(item)
            else:
                getattr(message, field.name).CopyFrom(draw(messages(inner, depth + 1)))
                getattr(message, field.name).SetInParent()
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=2)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


_VALIDATION = handles_pb2.Validation.DESCRIPTOR
_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_fast_printers_are_in_use() -> None:
    """Otherwise the comparisons below would compare the generic printers with
    themselves: a Validation whose fields changed goes back to them until printers.py
    learns it, and this says so."""
    assert _VALIDATION.full_name in printers.proto_json_printers(protojson.to_dict)
    assert _VALIDATION.full_name in printers.plain_printers(shapes.plain)


@_SETTINGS
@given(messages(_VALIDATION))
def test_validation_json_is_the_generic_printer(validation: Message) -> None:
    fast = printers.validation_json(validation, protojson.to_dict)
    assert codec.dumps(fast) == codec.dumps(protojson.planned_dict(validation))
    assert fast == json_format.MessageToDict(validation, always_print_fields_with_no_presence=True)


@_SETTINGS
@given(messages(handles_pb2.ValidateHandleResponse.DESCRIPTOR))
def test_a_validate_answer_prints_as_json_format(response: Message) -> None:
    assert protojson.to_dict(response) == json_format.MessageToDict(
        response, always_print_fields_with_no_presence=True
    )


@_SETTINGS
@given(messages(_VALIDATION))
def test_validation_plain_is_the_generic_plain(validation: Message) -> None:
    fast = printers.validation_plain(validation, shapes.plain)
    assert codec.dumps(fast) == codec.dumps(shapes.generic_plain(validation))
    assert shapes.plain(validation) == fast


@_SETTINGS
@given(_SECONDS, _NANOS)
def test_remembered_timestamps_are_the_timestamps(seconds: int, nanos: int) -> None:
    moment = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert printers.timestamp_text(seconds, nanos) == moment.ToJsonString()
    assert printers.timestamp_iso(seconds, nanos) == shapes.iso(moment.ToDatetime(tzinfo=UTC))
