"""Sealing secrets at rest: AES-256-GCM under a key derived from the master key.

Layout of a sealed blob: a format byte, the keyring generation (4 bytes, big endian), a
fresh random nonce, then ciphertext and tag. The header and the caller's record binding
(table, id, version) are the associated data, so a blob copied into another row, or under
another generation, fails to open instead of decrypting.

- Format 2: XAES-256-GCM with a 192-bit nonce (crypto/xaes.py). Nothing counts seals, so
  nothing would stop a generation at AES-GCM's 2^32 random nonces; with XAES there is no
  such limit to reach (about 2^80).
- Format 1: AES-256-GCM with a 96-bit nonce, as stores sealed before format 2. It still
  opens, and a keyring seals with it only for generations made before format 2, so that a
  store an older server may still run on keeps to what that server can open.
"""

from __future__ import annotations

import os
import struct
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyturn_server.crypto import xaes

_GCM = 1
_XAES = 2
_HEADER = struct.Struct(">BI")
_NONCE_BYTES = {_GCM: 12, _XAES: xaes.NONCE_BYTES}
_TAG_BYTES = 16


class _Aead(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes: ...
    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes) -> bytes: ...


class SealError(Exception):
    """A sealed blob is malformed or fails authentication. Never carries secret data."""


class GenerationNotLoaded(SealError):
    """Sealed under a keyring generation this process does not hold."""

    def __init__(self, generation: int) -> None:
        super().__init__(f"sealed under master key generation {generation}, which is not loaded")
        self.generation = generation


class Sealer:
    """Seals with generation ``current``: in format 2 when ``wide_from`` (the first
    generation made to seal with 192-bit nonces, 0 for none) covers it."""

    def __init__(self, keys: dict[int, bytes], current: int, wide_from: int = 0) -> None:
        if current not in keys:
            raise ValueError("current generation has no key")
        self._aeads: dict[int, dict[int, _Aead]] = {
            _GCM: {generation: AESGCM(key) for generation, key in keys.items()},
            _XAES: {generation: xaes.Xaes256Gcm(key) for generation, key in keys.items()},
        }
        self.current = current
        self.format = _XAES if 0 < wide_from <= current else _GCM

    def seal(self, plaintext: bytes, binding: bytes) -> bytes:
        header = _HEADER.pack(self.format, self.current)
        nonce = os.urandom(_NONCE_BYTES[self.format])
        aead = self._aeads[self.format][self.current]
        return header + nonce + aead.encrypt(nonce, plaintext, header + binding)

    def open(self, blob: bytes, binding: bytes) -> bytes:
        if len(blob) < _HEADER.size:
            raise SealError("sealed value is truncated")
        fmt, generation = _HEADER.unpack_from(blob)
        nonce_bytes = _NONCE_BYTES.get(fmt)
        if nonce_bytes is None:
            raise SealError("sealed value has an unknown format")
        if len(blob) < _HEADER.size + nonce_bytes + _TAG_BYTES:
            raise SealError("sealed value is truncated")
        aead = self._aeads[fmt].get(generation)
        if aead is None:
            raise GenerationNotLoaded(generation)
        header = blob[: _HEADER.size]
        nonce = blob[_HEADER.size : _HEADER.size + nonce_bytes]
        try:
            return aead.decrypt(nonce, blob[_HEADER.size + nonce_bytes :], header + binding)
        except InvalidTag:
            raise SealError("sealed value failed authentication") from None

    @staticmethod
    def generation_of(blob: bytes) -> int:
        return int(_HEADER.unpack_from(blob)[1])


def binding(table: str, record_id: str, version: int = 0) -> bytes:
    """Associated data naming the record a sealed value belongs to."""
    return f"keyturn/v1|{table}|{record_id}|{version}".encode()
