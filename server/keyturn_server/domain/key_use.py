"""Keys used in place: encrypt and decrypt, sign and verify, MAC, and public keys.

New ciphertexts, signatures and MACs come from the primary version and carry its number
(a versioned envelope); decrypting and verifying open the version an envelope names, so
rotation is invisible to callers. An expired key still decrypts and verifies until each
version's own max lifetime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from keyturn_server.clock import Clock
from keyturn_server.crypto import material
from keyturn_server.crypto.algorithms import KEY_ALGORITHMS, Purpose
from keyturn_server.domain import limits
from keyturn_server.domain.access import Permission, Principal
from keyturn_server.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    KeyturnError,
    NotFound,
)
from keyturn_server.domain.key_material import MaterialCache, contained_use, version_disabled
from keyturn_server.domain.key_usage import UsageCounter
from keyturn_server.domain.keys import Key, KeyStatus, VersionState
from keyturn_server.domain.nonce_budget import NonceBudget
from keyturn_server.domain.signing_threads import THREADED, SigningThreads
from keyturn_server.domain.statistics import Statistics

T = TypeVar("T")

#: A key the principal may see, by id (NOT_FOUND otherwise), as the caller reads it.
KeyFinder = Callable[[Principal, str], Key]


class KeyUse:
    def __init__(
        self,
        find: KeyFinder,
        material: MaterialCache,
        usage: UsageCounter,
        clock: Clock,
        stats: Statistics,
        nonces: NonceBudget,
        signing: SigningThreads,
    ) -> None:
        self._nonces = nonces
        self._signing = signing
        self._find = find
        self._material = material
        self._usage = usage
        self._clock = clock
        self._stats = stats

    async def encrypt(
        self, principal: Principal, key_id: str, plaintext: bytes, associated_data: bytes
    ) -> tuple[bytes, int]:
        violations: list[FieldViolation] = []
        limits.data("plaintext", plaintext, limits.MAX_DATA, violations)
        limits.data("associated_data", associated_data, limits.MAX_DATA, violations)
        limits.raise_if(violations)
        key, loaded = self._primary_for(principal, key_id, Purpose.ENCRYPT)
        if not self._nonces.take(key.id, loaded.version):
            key, loaded = await self._with_nonce_budget(principal, key_id, key, loaded)
        return self._timed(
            "encrypt", key, lambda: loaded.encrypt(plaintext, associated_data)
        ), loaded.version

    async def _with_nonce_budget(
        self, principal: Principal, key_id: str, key: Key, loaded: material.LoadedVersion
    ) -> tuple[Key, material.LoadedVersion]:
        """The primary with one encryption of its nonce budget spent: a block of budget
        reserved first, and the key rotated first when its primary is past the rotation
        threshold (nonce_budget.py). One Encrypt per key does this at a time; the others
        wait for it and spend the block it reserved."""
        budget = self._nonces
        async with budget.lock(key.id):
            for _ in range(3):  # the primary may move meanwhile (a replica, the scheduler)
                key, loaded = self._primary_for(principal, key_id, Purpose.ENCRYPT)
                if budget.take(key.id, loaded.version):
                    return key, loaded
                refill = await budget.refill(key.id, loaded.version)
                if refill.rotate:
                    try:
                        await budget.rotate(key)
                        continue  # encrypt with the new primary
                    except KeyturnError:
                        if not refill.usable:
                            raise
                        budget.spend(key.id, loaded.version, refill)  # still under budget
                if budget.take(key.id, loaded.version):
                    return key, loaded
        raise FailedPrecondition(
            f"key {key.id!r} version {loaded.version} has used its AES-GCM nonce budget "
            f"({budget.limits.budget} encryptions) and a new primary could not be made; "
            "rotate the key",
            reason="NONCE_BUDGET_EXHAUSTED",
            metadata={"version": str(loaded.version)},
        )

    def decrypt(
        self, principal: Principal, key_id: str, ciphertext: bytes, associated_data: bytes
    ) -> tuple[bytes, int, bool]:
        violations: list[FieldViolation] = []
        limits.data("ciphertext", ciphertext, limits.MAX_CIPHERTEXT, violations)
        limits.data("associated_data", associated_data, limits.MAX_DATA, violations)
        limits.raise_if(violations)
        key, loaded = self._named_for(
            principal, key_id, Purpose.ENCRYPT, ciphertext, "ciphertext", "decrypt"
        )
        plaintext = self._timed("decrypt", key, lambda: loaded.decrypt(ciphertext, associated_data))
        if plaintext is None:
            raise InvalidArgument(
                "decryption failed: the ciphertext or the associated data is not the one "
                "this key produced",
                field="ciphertext",
                reason="DECRYPTION_FAILED",
            )
        return plaintext, loaded.version, loaded.version == key.primary_version

    async def sign(
        self, principal: Principal, key_id: str, data: bytes
    ) -> tuple[bytes, bytes, int, str]:
        violations: list[FieldViolation] = []
        limits.data("data", data, limits.MAX_DATA, violations)
        limits.raise_if(violations)
        key, loaded = self._primary_for(principal, key_id, Purpose.SIGN)
        if key.algorithm in THREADED:
            started = time.perf_counter()
            raw = await self._signing.run(principal.name, lambda: loaded.sign(data))
            self._account("sign", key, started)
        else:
            raw = self._timed("sign", key, lambda: loaded.sign(data))
        return material.wrap(loaded.version, raw), raw, loaded.version, loaded.signature_algorithm()

    def verify(
        self, principal: Principal, key_id: str, data: bytes, signature: bytes
    ) -> tuple[bool, int]:
        violations: list[FieldViolation] = []
        limits.data("data", data, limits.MAX_DATA, violations)
        limits.data("signature", signature, limits.MAX_SIGNATURE, violations)
        limits.raise_if(violations)
        key, loaded = self._named_for(
            principal, key_id, Purpose.SIGN, signature, "signature", "verify"
        )
        _, raw = material.unwrap(signature)
        return self._timed("verify", key, lambda: loaded.verify(data, raw)), loaded.version

    def public_key(self, principal: Principal, key_id: str, version: int) -> tuple[str, str, int]:
        principal.require(Permission.KEY_READ)
        key = self._find(principal, key_id)
        _require_purpose(key, Purpose.SIGN)
        # As Verify: an expired key's public keys still check old signatures, a removed
        # or destroyed key's are refused (before, served: relying parties went on
        # trusting a key removed as compromised).
        require_usable(key, self._clock.now(), allow_expired=True)
        number = version or key.primary_version
        record = key.version(number)
        if record is None:
            raise NotFound(f"key {key_id!r} has no version {number}", reason="VERSION_NOT_FOUND")
        if record.state is VersionState.DISABLED or record.disabled_by is not None:
            contained_use(principal, key, number, "public_key")
            # Refused like its other uses (Cloud KMS does too): relying parties that
            # fetch public keys must not verify with a version disabled as compromised;
            # nor once it expired while disabled (before, its max lifetime showed the
            # public key again).
            raise version_disabled(key, record)
        if record.public_pem is None:
            raise FailedPrecondition(f"version {number} has no public key")
        # Named from the public key: before, from the private key when the version was
        # enabled, and an expired version's answer said "rsa" instead of the scheme.
        return record.public_pem, material.signature_algorithm(record.public_pem), number

    def mac(self, principal: Principal, key_id: str, data: bytes) -> tuple[bytes, int]:
        violations: list[FieldViolation] = []
        limits.data("data", data, limits.MAX_DATA, violations)
        limits.raise_if(violations)
        key, loaded = self._primary_for(principal, key_id, Purpose.MAC)
        return material.wrap(
            loaded.version, self._timed("mac", key, lambda: loaded.mac(data))
        ), loaded.version

    def verify_mac(
        self, principal: Principal, key_id: str, data: bytes, mac: bytes
    ) -> tuple[bool, int]:
        violations: list[FieldViolation] = []
        limits.data("data", data, limits.MAX_DATA, violations)
        limits.data("mac", mac, limits.MAX_SIGNATURE, violations)
        limits.raise_if(violations)
        key, loaded = self._named_for(principal, key_id, Purpose.MAC, mac, "mac", "verify_mac")
        _, raw = material.unwrap(mac)
        return self._timed("verify_mac", key, lambda: loaded.verify_mac(data, raw)), loaded.version

    # --- which version, and whether the key may be used -------------------------------------

    def _primary_for(
        self, principal: Principal, key_id: str, purpose: Purpose
    ) -> tuple[Key, material.LoadedVersion]:
        principal.require(Permission.KEY_USE)
        key = self._find(principal, key_id)
        _require_purpose(key, purpose)
        now = self._clock.now()
        require_usable(key, now, allow_expired=False)
        return key, self._material.load(key, key.primary_version, now)

    def _named_for(
        self,
        principal: Principal,
        key_id: str,
        purpose: Purpose,
        envelope: bytes,
        field: str,
        use: str,
    ) -> tuple[Key, material.LoadedVersion]:
        principal.require(Permission.KEY_USE)
        key = self._find(principal, key_id)
        _require_purpose(key, purpose)
        now = self._clock.now()
        require_usable(key, now, allow_expired=True)
        try:
            number, _ = material.unwrap(envelope)
        except material.EnvelopeError as exc:
            raise InvalidArgument(str(exc), field=field, reason="MALFORMED_ENVELOPE") from None
        return key, self._material.load(key, number, now, principal, use)

    def _timed(self, operation: str, key: Key, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = fn()
        self._account(operation, key, started)
        return result

    def _account(self, operation: str, key: Key, started: float) -> None:
        self._stats.observe("use_key", time.perf_counter() - started)
        self._stats.operations[operation] += 1
        self._usage.count(key.id, self._clock.now())


def _require_purpose(key: Key, purpose: Purpose) -> None:
    actual = KEY_ALGORITHMS[key.algorithm].purpose
    if actual is not purpose:
        raise FailedPrecondition(
            f"key {key.id!r} is a {key.type} key ({key.algorithm}); it is for "
            f"{actual.value}, not {purpose.value}",
            reason="WRONG_KEY_PURPOSE",
        )


def require_usable(key: Key, now: datetime, allow_expired: bool) -> None:
    """Active and expiring keys are used; expired ones only decrypt and verify."""
    status = key.status(now)
    if status in (KeyStatus.ACTIVE, KeyStatus.EXPIRING):
        return
    if status is KeyStatus.EXPIRED and allow_expired:
        return
    raise FailedPrecondition(
        f"key {key.id!r} is {status.value.lower()}",
        reason=f"KEY_{status.value}",
        metadata={"status": status.value},
    )
