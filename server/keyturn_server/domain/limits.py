"""Input limits on every field a caller controls: sizes, counts and characters."""

from __future__ import annotations

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


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def text(field: str, value: str, limit: int, violations: list[FieldViolation]) -> None:
    if len(value) > limit:
        violations.append(FieldViolation(field, f"at most {limit} characters"))
    elif _has_control(value):
        violations.append(FieldViolation(field, "must not contain control characters"))


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
                    f"{field}[{key[:MAX_MAP_KEY]!r}]",
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
