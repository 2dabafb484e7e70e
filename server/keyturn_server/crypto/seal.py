"""Sealing secrets at rest: AES-256-GCM under a key derived from the master key.

Layout of a sealed blob: format byte 0x01, master-key generation (4 bytes, big endian),
a fresh 96-bit nonce, then ciphertext and tag. The header and the caller's record
binding (table, id, version) are the associated data, so a blob copied into another
row, or under another master key generation, fails to open instead of decrypting.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_FORMAT = 1
_HEADER = struct.Struct(">BI")
NONCE_BYTES = 12  # GCM's native nonce size; random nonces are safe far below 2^32 seals


class SealError(Exception):
    """A sealed blob is malformed or fails authentication. Never carries secret data."""


class GenerationNotLoaded(SealError):
    """Sealed under a keyring generation this process does not hold."""

    def __init__(self, generation: int) -> None:
        super().__init__(f"sealed under master key generation {generation}, which is not loaded")
        self.generation = generation


class Sealer:
    def __init__(self, keys: dict[int, bytes], current: int) -> None:
        if current not in keys:
            raise ValueError("current generation has no key")
        self._aeads = {generation: AESGCM(key) for generation, key in keys.items()}
        self.current = current

    def seal(self, plaintext: bytes, binding: bytes) -> bytes:
        header = _HEADER.pack(_FORMAT, self.current)
        nonce = os.urandom(NONCE_BYTES)
        return (
            header + nonce + self._aeads[self.current].encrypt(nonce, plaintext, header + binding)
        )

    def open(self, blob: bytes, binding: bytes) -> bytes:
        if len(blob) < _HEADER.size + NONCE_BYTES + 16:
            raise SealError("sealed value is truncated")
        fmt, generation = _HEADER.unpack_from(blob)
        if fmt != _FORMAT:
            raise SealError("sealed value has an unknown format")
        aead = self._aeads.get(generation)
        if aead is None:
            raise GenerationNotLoaded(generation)
        header = blob[: _HEADER.size]
        nonce = blob[_HEADER.size : _HEADER.size + NONCE_BYTES]
        try:
            return aead.decrypt(nonce, blob[_HEADER.size + NONCE_BYTES :], header + binding)
        except InvalidTag:
            raise SealError("sealed value failed authentication") from None

    @staticmethod
    def generation_of(blob: bytes) -> int:
        return int(_HEADER.unpack_from(blob)[1])


def binding(table: str, record_id: str, version: int = 0) -> bytes:
    """Associated data naming the record a sealed value belongs to."""
    return f"keyturn/v1|{table}|{record_id}|{version}".encode()
