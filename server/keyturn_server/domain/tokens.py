"""The shape of secret tokens: a type prefix, random bytes, and a checksum.

``kt_<type>_<secret><checksum>``, where the secret is the random bytes in base62 at a
fixed width and the checksum is CRC-32 of everything before it in six base62 digits.
The prefix makes leaked tokens recognisable to secret scanners (the GitHub token
scheme); the checksum lets a typo or a forgery be refused before any store lookup.
Access tokens for the API use the same scheme with the type ``api-access``.
"""

from __future__ import annotations

import math
import re
import secrets
import zlib
from dataclasses import dataclass

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM_WIDTH = 6  # 62^6 > 2^32
PREFIX = "kt"
ACCESS_TOKEN_TYPE = "api-access"
MAX_TOKEN_LENGTH = 256
_SHAPE = re.compile(r"^kt_([a-z][a-z0-9-]{0,31})_([0-9A-Za-z]+)$")


def _encode(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, rest = divmod(value, 62)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits))


def _width(nbytes: int) -> int:
    return math.ceil(nbytes * 8 / math.log2(62))


def _checksum(text: str) -> str:
    return _encode(zlib.crc32(text.encode()), _CHECKSUM_WIDTH)


@dataclass(frozen=True)
class ParsedToken:
    type: str
    text: str


def new_token(type_name: str, nbytes: int) -> str:
    body = _encode(int.from_bytes(secrets.token_bytes(nbytes), "big"), _width(nbytes))
    head = f"{PREFIX}_{type_name}_{body}"
    return head + _checksum(head)


def parse(token: str) -> ParsedToken | None:
    """The token's type if it is well formed, else None. No I/O: malformed input never
    reaches the store."""
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    match = _SHAPE.match(token)
    if match is None:
        return None
    type_name, tail = match.groups()
    if len(tail) <= _CHECKSUM_WIDTH:
        return None
    head = token[:-_CHECKSUM_WIDTH]
    if not secrets.compare_digest(_checksum(head), token[-_CHECKSUM_WIDTH:]):
        return None
    return ParsedToken(type_name, token)
