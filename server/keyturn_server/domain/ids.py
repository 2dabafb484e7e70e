"""Resource ids: a readable prefix and 80 random bits in lowercase base32."""

from __future__ import annotations

import base64
import re
import secrets

from keyturn_server.domain.errors import InvalidArgument

_BODY = 16  # 10 random bytes -> 16 base32 characters


def new_id(prefix: str) -> str:
    body = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    return f"{prefix}_{body}"


def check_id(prefix: str, value: str, field: str) -> str:
    if not value:
        raise InvalidArgument("required", field=field)
    if not re.fullmatch(rf"{prefix}_[a-z2-7]{{{_BODY}}}", value):
        raise InvalidArgument(
            f"not a {prefix} id (expected {prefix}_ and {_BODY} base32 characters)",
            field=field,
        )
    return value
