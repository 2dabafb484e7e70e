"""XAES-256-GCM (C2SP): AES-256-GCM with 192-bit nonces, for keys that seal without count.

AES-256-GCM with random 96-bit nonces is safe for about 2^32 messages per key (NIST SP
800-38D 8.3), and the keyring's sealing keys have no count to stop at: a busy store of
device handles seals that many values in months. XAES-256-GCM derives a fresh AES-256-GCM
key from the sealing key and the first half of a random 192-bit nonce (two AES blocks, the
NIST SP 800-108 counter-mode KDF with CMAC), so a key is used for one message in practice
and random nonces stay safe for about 2^80 messages.

Specification and test vectors: https://c2sp.org/XAES-256-GCM.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 24
_BLOCK = 16
_LABEL = b"X"


def _shifted(block: bytes) -> bytes:
    """CMAC's subkey K1 = L << 1, reduced by x^128 + x^7 + x^2 + x + 1."""
    value = int.from_bytes(block, "big") << 1
    if value >> 128:
        value = (value & ((1 << 128) - 1)) ^ 0x87
    return value.to_bytes(_BLOCK, "big")


class Xaes256Gcm:
    """One key; ``encrypt`` / ``decrypt`` take the 24-byte nonce and raise InvalidTag on a
    wrong nonce, key, ciphertext or associated data, like AESGCM."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("XAES-256-GCM takes a 32-byte key")
        # ECB on single blocks is the KDF's block-cipher step, not a mode over data.
        self._aes = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305
        self._k1 = int.from_bytes(_shifted(self._block(bytes(_BLOCK))), "big")

    def _block(self, data: bytes) -> bytes:
        # A context per call: a CipherContext is not safe to share between threads, and
        # seals happen on the store's threads as well as the event loop.
        encryptor = self._aes.encryptor()
        return encryptor.update(data) + encryptor.finalize()

    def _derived(self, nonce: bytes) -> AESGCM:
        if len(nonce) != NONCE_BYTES:
            raise ValueError("XAES-256-GCM takes a 24-byte nonce")
        half = nonce[:12]
        m1 = int.from_bytes(b"\x00\x01" + _LABEL + b"\x00" + half, "big") ^ self._k1
        m2 = int.from_bytes(b"\x00\x02" + _LABEL + b"\x00" + half, "big") ^ self._k1
        return AESGCM(self._block(m1.to_bytes(_BLOCK, "big") + m2.to_bytes(_BLOCK, "big")))

    def encrypt(self, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
        return self._derived(nonce).encrypt(nonce[12:], plaintext, associated_data)

    def decrypt(self, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
        return self._derived(nonce).decrypt(nonce[12:], ciphertext, associated_data)
