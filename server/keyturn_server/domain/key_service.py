"""What callers do with keys: generate, read, rotate, remove/restore, export, and use in
place (encrypt, decrypt, sign, verify, MAC).

Every change runs as one store transaction with its event and audit entry. Material is
generated outside the transaction (an RSA key takes tens of milliseconds) and sealed
inside it, bound to its (key, version).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from keyturn_server.clock import Clock
from keyturn_server.crypto import material
from keyturn_server.crypto.algorithms import KEY_ALGORITHMS, Purpose
from keyturn_server.crypto.keyring import Keyring
from keyturn_server.crypto.seal import SealError, binding
from keyturn_server.domain import limits
from keyturn_server.domain.access import Permission, Principal
from keyturn_server.domain.audit import AuditDraft, AuditLog
from keyturn_server.domain.configuration import ConfigService
from keyturn_server.domain.errors import (
    DataLoss,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from keyturn_server.domain.events import EventKind, NewEvent, Subject
from keyturn_server.domain.ids import check_id, new_id
from keyturn_server.domain.keys import (
    Key,
    KeySchedule,
    KeyState,
    KeyStatus,
    KeyVersion,
    VersionState,
    primary_deadlines,
)
from keyturn_server.domain.paging import scoped_page, token_after
from keyturn_server.domain.statistics import Report, Statistics, recent, report
from keyturn_server.store.base import Store
from keyturn_server.store.sql import SqlRepository

T = TypeVar("T")
KEY_TABLE = "key_versions"
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class KeyPage:
    keys: list[Key]
    next_page_token: str
    total_size: int


def material_binding(key_id: str, version: int) -> bytes:
    return binding(KEY_TABLE, key_id, version)


class KeyService:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        config: ConfigService,
        audit: AuditLog,
        clock: Clock,
        stats: Statistics,
        destroy_delay: timedelta,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._config = config
        self._audit = audit
        self._clock = clock
        self._stats = stats
        self.destroy_delay = destroy_delay
        self._loaded: OrderedDict[tuple[str, int], material.LoadedVersion] = OrderedDict()
        # Usage counts are advisory: kept here and flushed in batches, so that using a
        # key in place costs no write.
        self._usage: dict[str, tuple[int, datetime]] = {}

    # --- reading -------------------------------------------------------------------------

    def _get(self, principal: Principal, key_id: str) -> Key:
        check_id("key", key_id, "key_id")
        key = self._store.read().get_key(key_id)
        if key is None:
            raise NotFound(f"key {key_id!r} not found", reason="KEY_NOT_FOUND")
        principal.require_visible("key", key_id, key.owner)
        return self._with_pending_usage(key)

    def _with_pending_usage(self, key: Key) -> Key:
        pending = self._usage.get(key.id)
        if pending is None:
            return key
        count, last = pending
        return dataclasses.replace(key, usage_count=key.usage_count + count, last_used_time=last)

    def get(self, principal: Principal, key_id: str) -> Key:
        principal.require(Permission.KEY_READ)
        return self._get(principal, key_id)

    async def list_keys(
        self,
        principal: Principal,
        type_name: str,
        status: KeyStatus | None,
        owner: str,
        page_size: int,
        page_token: str,
    ) -> KeyPage:
        principal.require(Permission.KEY_READ)
        owner, page = scoped_page(
            principal, "keys", type_name, status, owner, page_size, page_token
        )
        now = self._clock.now()
        found = await self._store.report(
            lambda repo: repo.list_keys(now, type_name, status, owner, page.after, page.size)
        )
        keys = [self._with_pending_usage(k) for k in found.items]
        return KeyPage(keys, token_after(page, keys, found.more), found.total)

    async def statistics(self, principal: Principal) -> Report:
        principal.require(Permission.STATS_READ)
        now = self._clock.now()

        def work(repo: SqlRepository) -> Report:
            return report(
                repo.key_counts(now), recent(repo.event_counts, now, "key"), now, handles=False
            )

        return await self._store.report(work)

    # --- lifecycle -----------------------------------------------------------------------

    async def generate(
        self,
        principal: Principal,
        type_name: str,
        metadata: dict[str, str],
        user_id: str,
        reveal: bool,
    ) -> tuple[Key, bytes | None]:
        principal.require(Permission.KEY_CREATE)
        started = time.perf_counter()
        violations = limits.common(user_id)
        limits.mapping("metadata", metadata, violations)
        if not type_name:
            violations.append(FieldViolation("type", "required"))
        limits.raise_if(violations)
        key_type = self._config.current.key_types.get(type_name)
        if key_type is None:
            known = ", ".join(sorted(self._config.current.key_types))
            raise InvalidArgument(f"unknown key type {type_name!r}; one of {known}", field="type")
        if reveal:
            principal.require(Permission.KEY_EXPORT)
            if not key_type.exportable:
                raise FailedPrecondition(
                    f"keys of type {type_name!r} are not exportable; use them in place",
                    reason="KEY_NOT_EXPORTABLE",
                )
        secret, public_pem = await self._new_material(key_type.algorithm, key_type.key_length)
        key_id = new_id("key")

        def work(repo: SqlRepository) -> Key:
            now = self._clock.now()
            schedule = KeySchedule.of(key_type)
            rotation, expiry, warn = primary_deadlines(now, schedule)
            version = KeyVersion(key_id, 1, VersionState.ENABLED, now, expiry, None, public_pem)
            key = Key(
                id=key_id,
                type=type_name,
                algorithm=key_type.algorithm,
                key_length=key_type.key_length,
                state=KeyState.ACTIVE,
                primary_version=1,
                owner=principal.name,
                created_for=user_id,
                metadata=dict(metadata),
                create_time=now,
                schedule=schedule,
                exportable=key_type.exportable,
                next_rotation_time=rotation,
                expire_time=expiry,
                warn_time=warn,
                notify_time=warn,
                versions=(version,),
            )
            repo.insert_key(key)
            repo.insert_version(version, self._keyring.seal(secret, material_binding(key_id, 1)))
            self.event(repo, EventKind.CREATED, key, "generated")
            details = {"algorithm": key.algorithm, "type": type_name}
            if reveal:
                details["revealed_version"] = "1"
            self.record(repo, now, principal, "key.generate", key, user_id, "", details)
            return key

        key = await self._store.write(work)
        self._stats.observe("generate_key", time.perf_counter() - started)
        return key, (secret if reveal else None)

    async def _new_material(self, algorithm: str, length: int) -> tuple[bytes, str | None]:
        if KEY_ALGORITHMS[algorithm].purpose is Purpose.SIGN:
            return await asyncio.to_thread(material.generate, algorithm, length)
        return material.generate(algorithm, length)

    async def rotate(self, principal: Principal, key_id: str, user_id: str, reason: str) -> Key:
        principal.require(Permission.KEY_MANAGE)
        limits.raise_if(limits.common(user_id, reason))
        key = self._get(principal, key_id)
        secret, public_pem = await self._new_material(key.algorithm, key.key_length)

        def work(repo: SqlRepository) -> Key:
            current = self._locked(repo, principal, key_id)
            if current.state is not KeyState.ACTIVE and current.state is not KeyState.EXPIRED:
                raise FailedPrecondition(
                    f"key {key_id!r} is {current.state.value.lower()}; only active or expired "
                    "keys can be rotated",
                    reason="KEY_NOT_ROTATABLE",
                )
            return self.add_primary(
                repo, current, secret, public_pem, principal, user_id, reason or "manual"
            )

        return await self._store.write(work)

    def add_primary(
        self,
        repo: SqlRepository,
        key: Key,
        secret: bytes,
        public_pem: str | None,
        principal: Principal,
        user_id: str,
        reason: str,
    ) -> Key:
        """Make a new primary version (manual rotation and the scheduler share this)."""
        now = self._clock.now()
        number = max((v.version for v in key.versions), default=0) + 1
        rotation, expiry, warn = primary_deadlines(now, key.schedule)
        version = KeyVersion(key.id, number, VersionState.ENABLED, now, expiry, None, public_pem)
        repo.insert_version(version, self._keyring.seal(secret, material_binding(key.id, number)))
        rotated = dataclasses.replace(
            key,
            state=KeyState.ACTIVE,
            primary_version=number,
            next_rotation_time=rotation,
            expire_time=expiry,
            warn_time=warn,
            notify_time=warn,
            versions=(*key.versions, version),
        )
        repo.update_key(rotated)
        self.event(repo, EventKind.ROTATED, rotated, reason, deadline=rotation, version=number)
        self.record(
            repo,
            now,
            principal,
            "key.rotate",
            rotated,
            user_id,
            reason,
            {"version": str(number), "previous_version": str(key.primary_version)},
        )
        return rotated

    async def remove(self, principal: Principal, key_id: str, user_id: str, reason: str) -> Key:
        principal.require(Permission.KEY_MANAGE)
        limits.raise_if(limits.common(user_id, reason))

        def work(repo: SqlRepository) -> Key:
            key = self._locked(repo, principal, key_id)
            if key.state in (KeyState.REMOVED, KeyState.DESTROYED):
                raise FailedPrecondition(
                    f"key {key_id!r} is already {key.state.value.lower()}",
                    reason="KEY_ALREADY_REMOVED",
                )
            now = self._clock.now()
            removed = dataclasses.replace(
                key,
                state=KeyState.REMOVED,
                restore_state=key.state,
                destroy_time=now + self.destroy_delay,
                notify_time=None,
            )
            repo.update_key(removed)
            self.event(
                repo, EventKind.REMOVED, removed, reason or "removed", deadline=removed.destroy_time
            )
            self.record(
                repo,
                now,
                principal,
                "key.remove",
                removed,
                user_id,
                reason,
                {"destroy_time": _iso(removed.destroy_time)},
            )
            return removed

        key = await self._store.write(work)
        self.forget(key_id)
        return key

    async def restore(self, principal: Principal, key_id: str, user_id: str, reason: str) -> Key:
        principal.require(Permission.KEY_MANAGE)
        limits.raise_if(limits.common(user_id, reason))

        def work(repo: SqlRepository) -> Key:
            key = self._locked(repo, principal, key_id)
            if key.state is not KeyState.REMOVED:
                raise FailedPrecondition(
                    f"key {key_id!r} is {key.state.value.lower()}; only a removed key whose "
                    "destruction is still pending can be restored",
                    reason="KEY_NOT_REMOVED",
                )
            now = self._clock.now()
            restored = dataclasses.replace(
                key,
                state=key.restore_state or KeyState.ACTIVE,
                restore_state=None,
                destroy_time=None,
                notify_time=key.warn_time if key.warn_time and key.warn_time > now else None,
            )
            repo.update_key(restored)
            self.event(repo, EventKind.RESTORED, restored, reason or "restored")
            self.record(repo, now, principal, "key.restore", restored, user_id, reason, {})
            return restored

        return await self._store.write(work)

    async def export(
        self, principal: Principal, key_id: str, version: int, user_id: str, reason: str
    ) -> tuple[bytes, int, str]:
        principal.require(Permission.KEY_EXPORT)
        limits.raise_if(limits.common(user_id, reason))
        key = self._get(principal, key_id)
        if not key.exportable:
            raise FailedPrecondition(
                f"key {key_id!r} is not exportable; use it in place", reason="KEY_NOT_EXPORTABLE"
            )
        self._require_state(key, allow_expired=False)
        loaded = self._load(key, version or key.primary_version)

        def work(repo: SqlRepository) -> None:
            self.record(
                repo,
                self._clock.now(),
                principal,
                "key.export",
                key,
                user_id,
                reason,
                {"version": str(loaded.version)},
            )

        await self._store.write(work)  # the export is durable in the audit log before it leaves
        return loaded.material, loaded.version, key.algorithm

    # --- use in place --------------------------------------------------------------------

    def encrypt(
        self, principal: Principal, key_id: str, plaintext: bytes, associated_data: bytes
    ) -> tuple[bytes, int]:
        violations: list[FieldViolation] = []
        limits.data("plaintext", plaintext, limits.MAX_DATA, violations)
        limits.data("associated_data", associated_data, limits.MAX_DATA, violations)
        limits.raise_if(violations)
        key, loaded = self._primary_for(principal, key_id, Purpose.ENCRYPT)
        return self._timed(
            "encrypt", key, lambda: loaded.encrypt(plaintext, associated_data)
        ), loaded.version

    def decrypt(
        self, principal: Principal, key_id: str, ciphertext: bytes, associated_data: bytes
    ) -> tuple[bytes, int, bool]:
        violations: list[FieldViolation] = []
        limits.data("ciphertext", ciphertext, limits.MAX_CIPHERTEXT, violations)
        limits.data("associated_data", associated_data, limits.MAX_DATA, violations)
        limits.raise_if(violations)
        key, loaded = self._named_for(principal, key_id, Purpose.ENCRYPT, ciphertext, "ciphertext")
        plaintext = self._timed("decrypt", key, lambda: loaded.decrypt(ciphertext, associated_data))
        if plaintext is None:
            raise InvalidArgument(
                "decryption failed: the ciphertext or the associated data is not the one "
                "this key produced",
                field="ciphertext",
                reason="DECRYPTION_FAILED",
            )
        return plaintext, loaded.version, loaded.version == key.primary_version

    def sign(self, principal: Principal, key_id: str, data: bytes) -> tuple[bytes, bytes, int, str]:
        violations: list[FieldViolation] = []
        limits.data("data", data, limits.MAX_DATA, violations)
        limits.raise_if(violations)
        key, loaded = self._primary_for(principal, key_id, Purpose.SIGN)
        raw = self._timed("sign", key, lambda: loaded.sign(data))
        return material.wrap(loaded.version, raw), raw, loaded.version, loaded.signature_algorithm()

    def verify(
        self, principal: Principal, key_id: str, data: bytes, signature: bytes
    ) -> tuple[bool, int]:
        violations: list[FieldViolation] = []
        limits.data("data", data, limits.MAX_DATA, violations)
        limits.data("signature", signature, limits.MAX_SIGNATURE, violations)
        limits.raise_if(violations)
        key, loaded = self._named_for(principal, key_id, Purpose.SIGN, signature, "signature")
        _, raw = material.unwrap(signature)
        return self._timed("verify", key, lambda: loaded.verify(data, raw)), loaded.version

    def public_key(self, principal: Principal, key_id: str, version: int) -> tuple[str, str, int]:
        principal.require(Permission.KEY_READ)
        key = self._get(principal, key_id)
        self._require_purpose(key, Purpose.SIGN)
        number = version or key.primary_version
        record = key.version(number)
        if record is None:
            raise NotFound(f"key {key_id!r} has no version {number}", reason="VERSION_NOT_FOUND")
        if record.public_pem is None:
            raise FailedPrecondition(f"version {number} has no public key")
        loaded = self._load(key, number) if record.usable else None
        algorithm = loaded.signature_algorithm() if loaded else key.algorithm
        return record.public_pem, algorithm, number

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
        key, loaded = self._named_for(principal, key_id, Purpose.MAC, mac, "mac")
        _, raw = material.unwrap(mac)
        return self._timed("verify_mac", key, lambda: loaded.verify_mac(data, raw)), loaded.version

    # --- helpers -------------------------------------------------------------------------

    def _primary_for(
        self, principal: Principal, key_id: str, purpose: Purpose
    ) -> tuple[Key, material.LoadedVersion]:
        principal.require(Permission.KEY_USE)
        key = self._get(principal, key_id)
        self._require_purpose(key, purpose)
        self._require_state(key, allow_expired=False)
        return key, self._load(key, key.primary_version)

    def _named_for(
        self, principal: Principal, key_id: str, purpose: Purpose, envelope: bytes, field: str
    ) -> tuple[Key, material.LoadedVersion]:
        principal.require(Permission.KEY_USE)
        key = self._get(principal, key_id)
        self._require_purpose(key, purpose)
        self._require_state(key, allow_expired=True)
        try:
            number, _ = material.unwrap(envelope)
        except material.EnvelopeError as exc:
            raise InvalidArgument(str(exc), field=field, reason="MALFORMED_ENVELOPE") from None
        return key, self._load(key, number)

    def _require_purpose(self, key: Key, purpose: Purpose) -> None:
        actual = KEY_ALGORITHMS[key.algorithm].purpose
        if actual is not purpose:
            raise FailedPrecondition(
                f"key {key.id!r} is a {key.type} key ({key.algorithm}); it is for "
                f"{actual.value}, not {purpose.value}",
                reason="WRONG_KEY_PURPOSE",
            )

    def _require_state(self, key: Key, allow_expired: bool) -> None:
        status = key.status(self._clock.now())
        if status in (KeyStatus.ACTIVE, KeyStatus.EXPIRING):
            return
        if status is KeyStatus.EXPIRED and allow_expired:
            return
        raise FailedPrecondition(
            f"key {key.id!r} is {status.value.lower()}",
            reason=f"KEY_{status.value}",
            metadata={"status": status.value},
        )

    def _load(self, key: Key, number: int) -> material.LoadedVersion:
        version = key.version(number)
        if version is None:
            raise NotFound(f"key {key.id!r} has no version {number}", reason="VERSION_NOT_FOUND")
        if not version.usable or self._clock.now() >= version.expire_time:
            raise FailedPrecondition(
                f"version {number} of key {key.id!r} expired at {_iso(version.expire_time)}; "
                "its material is destroyed",
                reason="VERSION_EXPIRED",
            )
        cached = self._loaded.get((key.id, number))
        if cached is not None:
            self._loaded.move_to_end((key.id, number))
            return cached
        sealed = self._store.read().sealed_material(key.id, number)
        if sealed is None:
            raise FailedPrecondition(f"version {number} of key {key.id!r} has no material")
        try:
            secret = self._keyring.open(sealed, material_binding(key.id, number))
        except SealError:
            self._stats.integrity_failures += 1
            raise DataLoss(
                f"the stored material of key {key.id!r} version {number} failed authentication; "
                "it was altered or belongs to another record",
                reason="MATERIAL_TAMPERED",
            ) from None
        loaded = material.LoadedVersion.load(key.id, number, key.algorithm, secret)
        self._loaded[(key.id, number)] = loaded
        if len(self._loaded) > _CACHE_SIZE:
            self._loaded.popitem(last=False)
        return loaded

    def _timed(self, operation: str, key: Key, fn: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = fn()
        self._stats.observe("use_key", time.perf_counter() - started)
        self._stats.operations[operation] += 1
        count, _ = self._usage.get(key.id, (0, self._clock.now()))
        self._usage[key.id] = (count + 1, self._clock.now())
        return result

    def forget(self, key_id: str) -> None:
        """Drop cached material of a key (removed or destroyed)."""
        for cached in [k for k in self._loaded if k[0] == key_id]:
            del self._loaded[cached]

    def forget_version(self, key_id: str, version: int) -> None:
        self._loaded.pop((key_id, version), None)

    async def flush_usage(self) -> None:
        """Persist the usage counted since the last flush (called periodically)."""
        if not self._usage:
            return
        pending, self._usage = self._usage, {}
        await self._store.write(lambda repo: repo.add_key_usage(pending))

    def _locked(self, repo: SqlRepository, principal: Principal, key_id: str) -> Key:
        check_id("key", key_id, "key_id")
        key = repo.get_key(key_id, for_update=True)
        if key is None:
            raise NotFound(f"key {key_id!r} not found", reason="KEY_NOT_FOUND")
        principal.require_visible("key", key_id, key.owner)
        return key

    def event(  # the scheduler records its transitions through here too
        self,
        repo: SqlRepository,
        kind: EventKind,
        key: Key,
        reason: str,
        deadline: datetime | None = None,
        version: int = 0,
    ) -> None:
        repo.append_event(
            NewEvent(
                kind, Subject.KEY, key.id, key.type, key.owner, key, deadline, reason, version
            ),
            self._clock.now(),
        )

    def record(
        self,
        repo: SqlRepository,
        now: datetime,
        principal: Principal,
        action: str,
        key: Key,
        user_id: str,
        reason: str,
        details: dict[str, str],
    ) -> None:
        self._audit.record(
            repo,
            now,
            AuditDraft(
                action,
                principal.name,
                principal.role.value,
                "key",
                key.id,
                user_id,
                reason,
                principal.peer,
                "ok",
                details,
            ),
        )


def _iso(when: datetime | None) -> str:
    return "" if when is None else when.isoformat()
