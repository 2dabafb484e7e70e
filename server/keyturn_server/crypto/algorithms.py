"""The algorithms a key or handle type may name, and which lengths fit each."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Purpose(enum.Enum):
    ENCRYPT = "encrypt"
    SIGN = "sign"
    MAC = "mac"


@dataclass(frozen=True)
class KeyAlgorithm:
    name: str
    purpose: Purpose
    #: Unit of ``key_length`` in configuration: "bytes" or "bits".
    length_unit: str
    allowed_lengths: tuple[int, ...] | None
    min_length: int
    max_length: int
    exportable_by_default: bool

    def fits(self, length: int) -> bool:
        if self.allowed_lengths is not None:
            return length in self.allowed_lengths
        return self.min_length <= length <= self.max_length

    def describe_lengths(self) -> str:
        if self.allowed_lengths is not None:
            return " or ".join(str(n) for n in self.allowed_lengths) + f" {self.length_unit}"
        return f"{self.min_length} to {self.max_length} {self.length_unit}"


def _hmac(name: str, digest_size: int) -> KeyAlgorithm:
    # RFC 2104: keys shorter than the hash output weaken the MAC.
    return KeyAlgorithm(name, Purpose.MAC, "bytes", None, digest_size, 1024, True)


KEY_ALGORITHMS: dict[str, KeyAlgorithm] = {
    a.name: a
    for a in (
        KeyAlgorithm("aes-256-gcm", Purpose.ENCRYPT, "bytes", (32,), 32, 32, False),
        KeyAlgorithm("aes-128-gcm", Purpose.ENCRYPT, "bytes", (16,), 16, 16, False),
        KeyAlgorithm("rsa", Purpose.SIGN, "bits", (2048, 3072, 4096), 2048, 4096, False),
        KeyAlgorithm("ecdsa-p256", Purpose.SIGN, "bits", (256,), 256, 256, False),
        KeyAlgorithm("ed25519", Purpose.SIGN, "bits", (256,), 256, 256, False),
        _hmac("sha256", 32),
        _hmac("sha384", 48),
        _hmac("sha512", 64),
    )
}


@dataclass(frozen=True)
class HandleAlgorithm:
    """The hash of the keyed digest under which a handle's token is stored."""

    name: str
    min_length: int = 16  # 128 bits of secret at the very least
    max_length: int = 128


HANDLE_ALGORITHMS: dict[str, HandleAlgorithm] = {
    name: HandleAlgorithm(name) for name in ("sha256", "sha384", "sha512")
}
