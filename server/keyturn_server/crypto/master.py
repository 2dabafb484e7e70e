"""The master key: where it comes from, what is derived from it, and how a wrong one is
caught at start instead of on first use."""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MASTER_KEY_BYTES = 32
MIN_PASSPHRASE = 16
# OWASP's scrypt floor (N=2^17, r=8, p=1): ~128 MiB and a fraction of a second, once per start.
SCRYPT_N = 2**17
#: 32 bytes in base64, standard or URL-safe, with or without its one '=' of padding.
_BASE64_KEY = re.compile(r"[A-Za-z0-9+/]{43}=?|[A-Za-z0-9_-]{43}=?")


class MasterKeyError(Exception):
    """The master key is missing, malformed, or not the one the data was sealed with."""


@dataclass(frozen=True)
class MasterKey:
    """32 secret bytes. ``repr`` never shows them."""

    raw: bytes
    source: str

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r})"

    def derive(self, purpose: str) -> bytes:
        """An independent 32-byte key per purpose (HKDF-SHA256, domain-separated by info)."""
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"keyturn",
            info=b"keyturn/v1/" + purpose.encode(),
        ).derive(self.raw)


def needs_salt(value: str) -> bool:
    return _decode_raw(value) is None


def parse_master_key(value: str, salt: bytes | None, source: str = "MASTER_KEY") -> MasterKey:
    """32 bytes as 64 hex digits or base64, or else a passphrase stretched with scrypt."""
    value = value.strip()
    raw = _decode_raw(value)
    if raw is not None:
        return MasterKey(raw, source)
    if len(value) < MIN_PASSPHRASE:
        raise MasterKeyError(
            f"{source} must be 32 bytes (64 hex digits or base64) or a passphrase of at "
            f"least {MIN_PASSPHRASE} characters"
        )
    if salt is None:
        raise MasterKeyError(f"{source} is a passphrase but no scrypt salt was given")
    stretched = Scrypt(salt=salt, length=MASTER_KEY_BYTES, n=SCRYPT_N, r=8, p=1).derive(
        value.encode()
    )
    return MasterKey(stretched, source + " (passphrase)")


def _decode_raw(value: str) -> bytes | None:
    """32 bytes written as 64 hex digits or as canonical base64, and nothing else: any
    other text is a passphrase, and is stretched. Before, base64 was decoded leniently
    (characters outside the alphabet, spaces among them, were skipped), so about one
    passphrase of words in 35 ("horse battery orange horse piano cloud river cloud")
    read as 32 bytes and became the master key as it was, its strength the passphrase's
    alone, without scrypt."""
    if len(value) == 2 * MASTER_KEY_BYTES and all(c in string.hexdigits for c in value):
        return bytes.fromhex(value)
    if _BASE64_KEY.fullmatch(value) is None:
        return None
    decode = base64.urlsafe_b64decode if "-" in value or "_" in value else base64.b64decode
    raw = decode(value.rstrip("=") + "=")
    # The last character carries two bits past the 32 bytes; set, it is not an encoding.
    canonical = base64.b64encode(raw).decode().translate(str.maketrans("+/", "-_"))
    if canonical.rstrip("=") != value.rstrip("=").translate(str.maketrans("+/", "-_")):
        return None
    return raw


def legacy_master_key(value: str, source: str = "MASTER_KEY") -> MasterKey | None:
    """The master key releases before the strict reading above took ``value`` for, when
    that differs from today's reading: a passphrase they decoded as raw bytes. A data
    directory made then is wrapped under it, and is opened with it (and told to rotate)."""
    value = value.strip()
    if _decode_raw(value) is not None:
        return None
    if len(value) == 2 * MASTER_KEY_BYTES:
        try:
            return MasterKey(bytes.fromhex(value), source + " (read unstretched)")
        except ValueError:
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == MASTER_KEY_BYTES:
            return MasterKey(raw, source + " (read unstretched)")
    return None


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def load_or_create_dev_key(path: Path) -> tuple[MasterKey, bool]:
    """Development only: a random key in DATA_DIR/master.key (0600). Returns (key, created)."""
    if path.exists():
        return parse_master_key(path.read_text(), None, source=str(path)), False
    raw = secrets.token_bytes(MASTER_KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(raw.hex() + "\n")
    return MasterKey(raw, str(path)), True
