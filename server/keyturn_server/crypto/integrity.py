"""Keyed MACs over what the database holds in the clear: the rows that grant rights, the
audit log's anchor, and the page tokens handed to callers.

Their keys are derived (HKDF) from the keyring's audit key, not from the master key
itself: master-key rotation re-wraps the keyring but keeps its data keys, so every MAC
stays valid without being computed again, as token digests and the audit chain do.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: The version of row protection a keyring records once every row carries a MAC.
ROW_MACS = 1


def derive(root: bytes, purpose: str) -> bytes:
    """An independent 32-byte key per purpose (HKDF-SHA256, domain-separated by info)."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"keyturn",
        info=b"keyturn/v1/keyring/" + purpose.encode(),
    ).derive(root)


class Mac:
    """HMAC-SHA256 under one key. The key schedule runs once: each tag copies the keyed
    state, which is what keeps a MAC on every validation cheap (about a microsecond)."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return "Mac(...)"

    def tag(self, message: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(message)
        return mac.digest()

    def verify(self, message: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.tag(message), tag)


@dataclass(frozen=True)
class Protection:
    """The MAC keys the store authenticates rows and the audit anchor with."""

    rows: Mac
    anchor: Mac

    @staticmethod
    def derived_from(root: bytes) -> Protection:
        return Protection(Mac(derive(root, "row-mac")), Mac(derive(root, "audit-anchor")))
