"""The HTTP listener's JSON codec (api/http/codec.py): orjson on the fast path, and no
number silently rounded into a field's range on the way in."""

from __future__ import annotations

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
