"""Input limits on every field a caller controls: sizes, counts and characters; and how
an error message may quote what a caller sent (a bounded prefix, never all of it)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from keyturn_server.domain.errors import FieldViolation, InvalidArgument

MAX_USER_ID = 128
MAX_REASON = 512
MAX_MAP_ENTRIES = 32
MAX_MAP_KEY = 64
MAX_MAP_VALUE = 256
MAX_DATA = 64 * 1024
#: A ciphertext is the plaintext plus envelope (5), nonce (12) and tag (16).
MAX_CIPHERTEXT = MAX_DATA + 64
MAX_SIGNATURE = 4096
#: The largest request the listeners take, whole (a gRPC message, an HTTP body): the
#: largest valid one (a plaintext and its associated data, each MAX_DATA, base64 in JSON
#: being 4/3 of that) with room for the rest. It bounds what a caller, authenticated or
#: not, makes the server hold per request in flight: a request is received whole, and
#: held several times over while it is parsed, before its caller is known. At 1 MiB, 256
#: such requests without a token took the server from 70 MiB to 1.7 GB.
MAX_REQUEST = 256 * 1024


#: Quoted input is cut to this many characters in an error message.
QUOTE = 64
#: C0 and C1 controls and DEL, and the bidirectional embeddings, overrides and isolates
#: (U+202A-U+202E, U+2066-U+2069) that make a log line or a terminal show text in
#: another order than it was written ("Trojan Source", CVE-2021-42574).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def clip(value: str, limit: int = QUOTE) -> str:
    """At most ``limit`` characters of ``value``, with an ellipsis when it was longer."""
    return value if len(value) <= limit else value[:limit] + "…"


def quote(value: str, limit: int = QUOTE) -> str:
    """``value`` quoted for an error message: a bounded prefix, controls escaped."""
    return repr(clip(value, limit))


def text(field: str, value: str, limit: int, violations: list[FieldViolation]) -> None:
    if len(value) > limit:
        violations.append(FieldViolation(field, f"at most {limit} characters"))
    elif _has_control(value):
        violations.append(
            FieldViolation(field, "must not contain control or bidirectional-override characters")
        )


def mapping(field: str, value: Mapping[str, str], violations: list[FieldViolation]) -> None:
    if len(value) > MAX_MAP_ENTRIES:
        violations.append(FieldViolation(field, f"at most {MAX_MAP_ENTRIES} entries"))
        return
    for key, item in value.items():
        if not key:
            violations.append(FieldViolation(field, "keys must not be empty"))
        elif len(key) > MAX_MAP_KEY or _has_control(key):
            violations.append(
                FieldViolation(
                    f"{field}[{quote(key, MAX_MAP_KEY)}]",
                    f"keys are 1-{MAX_MAP_KEY} printable characters",
                )
            )
        elif len(item) > MAX_MAP_VALUE or _has_control(item):
            violations.append(
                FieldViolation(
                    f"{field}[{key!r}]", f"values are at most {MAX_MAP_VALUE} printable characters"
                )
            )


def data(field: str, value: bytes, limit: int, violations: list[FieldViolation]) -> None:
    if len(value) > limit:
        violations.append(FieldViolation(field, f"at most {limit} bytes"))


def common(user_id: str = "", reason: str = "") -> list[FieldViolation]:
    found: list[FieldViolation] = []
    text("user_id", user_id, MAX_USER_ID, found)
    text("reason", reason, MAX_REASON, found)
    return found


def raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument.of(violations)
