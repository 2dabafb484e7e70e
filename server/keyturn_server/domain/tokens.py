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
from typing import NamedTuple

from keyturn_server.crypto import native

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_CHECKSUM_WIDTH = 6  # 62^6 > 2^32
PREFIX = "kt"
ACCESS_TOKEN_TYPE = "api-access"
MAX_TOKEN_LENGTH = 256
#: A type of 1-32 characters, then the secret and the checksum (longer than the checksum).
_SHAPE = re.compile(rf"kt_[a-z][a-z0-9-]{{0,31}}_[0-9A-Za-z]{{{_CHECKSUM_WIDTH + 1},}}")
_VALUE = {digit: value for value, digit in enumerate(_ALPHABET)}


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


class ParsedToken(NamedTuple):
    type: str
    text: str


def new_token(type_name: str, nbytes: int) -> str:
    body = _encode(int.from_bytes(secrets.token_bytes(nbytes), "big"), _width(nbytes))
    head = f"{PREFIX}_{type_name}_{body}"
    return head + _checksum(head)


def parse_in_python(token: str) -> ParsedToken | None:
    """The token's type if it is well formed, else None. No I/O: malformed input never
    reaches the store. The reference implementation (see :func:`parse`)."""
    if len(token) > MAX_TOKEN_LENGTH or _SHAPE.fullmatch(token) is None:
        return None
    # The checksum digits read as a number, against CRC-32 of the rest: the same test as
    # encoding the CRC and comparing text, at half the cost. Neither side is secret.
    value = 0
    for digit in token[-_CHECKSUM_WIDTH:]:
        value = value * 62 + _VALUE[digit]
    if value != zlib.crc32(token[:-_CHECKSUM_WIDTH].encode()):
        return None
    return ParsedToken(token[len(PREFIX) + 1 : token.index("_", len(PREFIX) + 1)], token)


def parse_natively(token: str) -> ParsedToken | None:
    """:func:`parse_in_python` in the native extension (the same rule, ~20x faster)."""
    assert native.api is not None
    type_name = native.api.token_type(token)
    return None if type_name is None else ParsedToken(type_name, token)


#: The token's type if it is well formed, else None: the native implementation when the
#: extension is installed (crypto/native.py), else the Python one.
parse = parse_natively if native.api is not None else parse_in_python
