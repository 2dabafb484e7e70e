"""Key material: generation per algorithm, and the operations that use it in place.

Ciphertexts, signatures and MACs leave the service in a versioned envelope:
one format byte (0x01), the key version (4 bytes, big endian), then the payload. Decrypt
and the verifiers read the version from it, so rotation never breaks a caller.
"""

from __future__ import annotations

import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyturn_server.crypto.algorithms import KEY_ALGORITHMS, Purpose

_ENVELOPE = struct.Struct(">BI")
_ENVELOPE_FORMAT = 1
NONCE_BYTES = 12

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class EnvelopeError(ValueError):
    """A ciphertext, signature or MAC that is not a Keyturn envelope."""


def wrap(version: int, payload: bytes) -> bytes:
    return _ENVELOPE.pack(_ENVELOPE_FORMAT, version) + payload


def unwrap(envelope: bytes) -> tuple[int, bytes]:
    if len(envelope) < _ENVELOPE.size + 1:
        raise EnvelopeError("too short to be a Keyturn envelope")
    fmt, version = _ENVELOPE.unpack_from(envelope)
    if fmt != _ENVELOPE_FORMAT or version == 0:
        raise EnvelopeError("not a Keyturn envelope (unknown format byte or version 0)")
    return version, envelope[_ENVELOPE.size :]


def generate(algorithm: str, length: int) -> tuple[bytes, str | None]:
    """New material and, for signing keys, the public key PEM (not secret, stored clear)."""
    spec = KEY_ALGORITHMS[algorithm]
    if spec.purpose is not Purpose.SIGN:
        return os.urandom(length), None
    private: PrivateKey
    if algorithm == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=length)
    elif algorithm == "ecdsa-p256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der, pem.decode()


@dataclass(frozen=True)
class LoadedVersion:
    """One key version's material, loaded once and cached: loading an RSA key validates
    it, which costs tens of milliseconds."""

    key_id: str
    version: int
    algorithm: str
    material: bytes
    private_key: PrivateKey | None

    @staticmethod
    def load(key_id: str, version: int, algorithm: str, material: bytes) -> LoadedVersion:
        private: PrivateKey | None = None
        if KEY_ALGORITHMS[algorithm].purpose is Purpose.SIGN:
            # The AEAD seal already proved this DER is the one we generated, so the
            # expensive RSA consistency check adds nothing.
            loaded = serialization.load_der_private_key(
                material, password=None, unsafe_skip_rsa_key_validation=True
            )
            if not isinstance(
                loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
            ):
                raise ValueError("unsupported private key type")
            private = loaded
        return LoadedVersion(key_id, version, algorithm, material, private)

    # --- AEAD --------------------------------------------------------------------------

    def _aad(self, header: bytes, associated_data: bytes) -> bytes:
        key_id = self.key_id.encode()
        return header + bytes([len(key_id)]) + key_id + associated_data

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        header = _ENVELOPE.pack(_ENVELOPE_FORMAT, self.version)
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.material).encrypt(nonce, plaintext, self._aad(header, associated_data))
        return header + nonce + sealed

    def decrypt(self, ciphertext: bytes, associated_data: bytes) -> bytes | None:
        """The plaintext, or None when the ciphertext or associated data is not authentic."""
        header = ciphertext[: _ENVELOPE.size]
        body = ciphertext[_ENVELOPE.size :]
        if len(body) < NONCE_BYTES + 16:
            return None
        try:
            return AESGCM(self.material).decrypt(
                body[:NONCE_BYTES], body[NONCE_BYTES:], self._aad(header, associated_data)
            )
        except InvalidTag:
            return None

    # --- signatures --------------------------------------------------------------------

    def sign(self, data: bytes) -> bytes:
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            # Salt as long as the digest: what Cloud KMS's RSA_SIGN_PSS_*_SHA256 uses.
            return key.sign(data, _pss(), hashes.SHA256())
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(hashes.SHA256()))
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        raise ValueError("not a signing key")

    def verify(self, data: bytes, signature: bytes) -> bool:
        key = self.private_key
        try:
            if isinstance(key, rsa.RSAPrivateKey):
                key.public_key().verify(signature, data, _pss(), hashes.SHA256())
            elif isinstance(key, ec.EllipticCurvePrivateKey):
                key.public_key().verify(signature, data, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, ed25519.Ed25519PrivateKey):
                key.public_key().verify(signature, data)
            else:
                return False
        except InvalidSignature:
            return False
        return True

    def signature_algorithm(self) -> str:
        assert self.private_key is not None, "not a signing key"
        return _scheme(self.private_key.public_key())

    # --- MACs --------------------------------------------------------------------------

    def mac(self, data: bytes) -> bytes:
        return hmac.new(self.material, data, self.algorithm).digest()

    def verify_mac(self, data: bytes, mac: bytes) -> bool:
        return hmac.compare_digest(self.mac(data), mac)


def signature_algorithm(public_pem: str) -> str:
    """The signature scheme a version's public key verifies (e.g. "rsa-pss-2048-sha256"),
    read off the public key: the same name Sign gives, whatever state the version is in."""
    public = serialization.load_pem_public_key(public_pem.encode())
    if not isinstance(public, PublicKey):
        raise ValueError("unsupported public key type")
    return _scheme(public)


def _scheme(public: PublicKey) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        return f"rsa-pss-{public.key_size}-sha256"
    if isinstance(public, ec.EllipticCurvePublicKey):
        return "ecdsa-p256-sha256"
    return "ed25519"


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
