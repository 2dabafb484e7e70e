"""The HTTP listener's JSON codec (api/http/codec.py): orjson on the fast path, and no
number silently rounded into a field's range on the way in."""

from __future__ import annotations

import orjson
import pytest
from google.protobuf import json_format

from keyturn.v1 import events_pb2
from keyturn_server.api.http import codec, protojson


@pytest.mark.parametrize("number", [-(2**63) - 1, 2**64, 10**30, -(10**25)])
def test_an_integer_past_64_bits_is_read_exactly(number: int) -> None:
    assert codec.loads(b'{"n": %d}' % number) == {"n": number}


def test_an_int64_just_past_its_range_is_refused_not_rounded_into_it() -> None:
    """orjson alone reads -2^63-1 as the float -2^63, which an int64 field accepts."""
    document = codec.loads(b'{"resumeAfter": -9223372036854775809}')
    with pytest.raises(json_format.ParseError):
        protojson.parse_into(document, events_pb2.WatchExpiringRequest())
    edge = codec.loads(b'{"resumeAfter": -9223372036854775808}')
    message = events_pb2.WatchExpiringRequest()
    protojson.parse_into(edge, message)
    assert message.resume_after == -(2**63)


@pytest.mark.parametrize(
    "text",
    [
        b'{"n": NaN}',
        b'{"n": Infinity, "m": 1234567890123456789}',
        b'{"n": 1234567890123456789',
        b"\xff\xfe",
    ],
)
def test_what_is_not_json_is_refused_on_either_path(text: bytes) -> None:
    with pytest.raises(codec.DecodeError):
        codec.loads(text)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        (b'{"type": "encryption", "type": "signing"}', "type"),
        (b'{"a": 1, "\\u0061": 2}', "a"),  # the same name, spelled two ways
        (b'{"x": {"b": "q\\":", "b": 3}}', "b"),  # nested, a colon inside a string
        (b'{"a": 12345678901234567890, "a": 1}', "a"),  # the exact-integer path
        (b'[{"k": 1}, {"k": 2, "m": {"k": 3, "k": 4}}]', "k"),
    ],
)
def test_an_object_naming_a_member_twice_is_refused(text: bytes, name: str) -> None:
    """orjson and json keep the last value; protobuf's JSON parsers refuse the document.
    A proxy in front that read the first value would check another request."""
    with pytest.raises(codec.DuplicateName) as refused:
        codec.loads(text)
    assert refused.value.name == name


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": "x:y", "b": ":", "c": {"a": 1}}',  # colons in strings, a name reused apart
        b'[{"a": 1}, {"a": 2}]',
        b'{"token": "kt_x"}',
        b'{"s": "\\\\", "t": "\\"", "u": 1}',
    ],
)
def test_distinct_names_are_read_as_always(text: bytes) -> None:
    assert codec.loads(text) == orjson.loads(text)


def test_a_document_nested_past_pythons_recursion_limit_is_counted_without_recursion() -> None:
    document = codec.loads(b"[" * 1000 + b'{"a": 1, "b": 2}' + b"]" * 1000)
    for _ in range(1000):
        (document,) = document
    assert document == {"a": 1, "b": 2}


@pytest.mark.parametrize("depth", [1000, 3000])
def test_a_document_nested_past_jsons_depth_is_refused_on_the_exact_path_too(depth: int) -> None:
    """The 19-digit number sends it to json, which gave up with a RecursionError."""
    with pytest.raises(codec.DecodeError, match="depth limit exceeded"):
        codec.loads(b"[" * depth + b"1234567890123456789" + b"]" * depth)
