"""JSON text for the HTTP listener, by orjson: about ten times json's speed on the small
documents of a call (a validation's answer: 0.6 µs against 7 µs), with the same compact
output (no spaces, keys in insertion order). It writes UTF-8 as is where json escaped
non-ASCII characters, and it refuses what RFC 8259 does (NaN, Infinity, lone surrogates,
integers beyond 64 bits) where json accepted them; proto3 JSON prints non-finite doubles
as strings and 64-bit integers as strings, so no valid answer is affected."""

from __future__ import annotations

import json
from typing import Any

import orjson

#: What ``loads`` raises on text that is not JSON (a ValueError).
DecodeError = orjson.JSONDecodeError


def dumps(document: Any) -> bytes:
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError:
        # Text that is not valid Unicode (a lone surrogate from a percent-decoded query
        # name, echoed in an error): json escapes it rather than refusing.
        return json.dumps(document, separators=(",", ":")).encode()


def loads(text: bytes) -> Any:
    return orjson.loads(text)
