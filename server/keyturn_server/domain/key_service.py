"""What callers do with keys: generate, read, rotate, remove and restore, export, and use
in place (:mod:`key_use`).

Every change runs as one unit of work with its event and audit entry. Material is made
outside the unit of work (an RSA key takes tens of milliseconds) and sealed inside it,
bound to its (key, version); new primaries come from :mod:`key_lifecycle`, which the
scheduler uses too.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from keyturn_server.clock import Clock
from keyturn_server.domain import limits
from keyturn_server.domain.access import Permission, Principal, Role
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from keyturn_server.domain.events import EventKind
from keyturn_server.domain.ids import check_id, new_id
from keyturn_server.domain.journal import Journal
from keyturn_server.domain.key_cache import KeyCache
from keyturn_server.domain.key_lifecycle import KeyLifecycle
from keyturn_server.domain.key_material import MaterialCache
from keyturn_server.domain.key_usage import UsageCounter
from keyturn_server.domain.key_use import KeyUse, require_usable
from keyturn_server.domain.key_versions import KeyVersions
from keyturn_server.domain.keys import (
    Key,
    KeySchedule,
    KeyState,
    KeyStatus,
    KeyVersion,
    VersionState,
    primary_deadlines,
)
from keyturn_server.domain.nonce_budget import NonceBudget, NonceLimits
from keyturn_server.domain.paging import (
    RECORD_BYTES,
    VERSION_BYTES,
    PageTokens,
    fitted,
    mapping_weight,
    scoped_page,
    token_after,
)
from keyturn_server.domain.repositories import Repository, Store
from keyturn_server.domain.signing_threads import SigningThreads
from keyturn_server.domain.statistics import Report, Statistics, recent, report

#: Live versions (enabled or disabled) a key may hold before a caller's RotateKey is
#: refused. Every read and rotation of a key, and every event about it, carries all its
#: versions: 1,200 manual rotations of one key made each further rotation cost the
#: store's writer 55 ms and each GetKey 27 KB, without bound. The default types keep at
#: most 7 enabled at once; a version stays live until its own max lifetime (disabling
#: does not end it), so the room comes back by itself. The
#: scheduler's rotations are never refused (AWS KMS caps on-demand rotations at 25 a key),
#: nor are an operator's or an admin's: a rotation is how a compromised version is
#: contained, and it used to be refused exactly when a thief with the owner's token had
#: rotated the key up to the cap. The cap bounds what a service token can loop on; the
#: roles that contain incidents are trusted with everything else already.
MAX_ENABLED_VERSIONS = 100


@dataclass(frozen=True)
class KeyPage:
    keys: list[Key]
    next_page_token: str
    total_size: int


class KeyService:
    def __init__(
        self,
        store: Store,
        config: ConfigService,
        journal: Journal,
        material: MaterialCache,
        lifecycle: KeyLifecycle,
        clock: Clock,
        stats: Statistics,
        destroy_delay: timedelta,
        pages: PageTokens,
        nonces: NonceLimits | None = None,
    ) -> None:
        self._store = store
        self._pages = pages
        self._config = config
        self._journal = journal
        self._material = material
        self._lifecycle = lifecycle
        self._clock = clock
        self._stats = stats
        self.destroy_delay = destroy_delay
        self._usage = UsageCounter(store)
        self.cache = KeyCache(store, on_read=material.drop_unusable)
        self.nonces = NonceBudget(store, lifecycle, nonces or NonceLimits())
        #: RSA signatures, off the event loop (signing_threads.py).
        self.signing = SigningThreads()
        use = KeyUse(self._find, material, self._usage, clock, stats, self.nonces, self.signing)
        # Use in place, as callers see it: the same service as the rest of a key's API.
        self.encrypt = use.encrypt
        self.decrypt = use.decrypt
        self.sign = use.sign
        self.verify = use.verify
        self.public_key = use.public_key
        self.mac = use.mac
        self.verify_mac = use.verify_mac
        versions = KeyVersions(store, self._locked, journal, material, clock)
        #: Containing a compromised version without stopping its key (key_versions.py).
        self.disable_version = versions.disable
        self.enable_version = versions.enable

    # --- reading -------------------------------------------------------------------------

    def _find(self, principal: Principal, key_id: str) -> Key:
        """The key as stored (usage as last flushed), if ``principal`` may see it."""
        check_id("key", key_id, "key_id")
        key = self.cache.get(key_id)
        if key is None:
            raise NotFound(f"key {key_id!r} not found", reason="KEY_NOT_FOUND")
        principal.require_visible("key", key_id, key.owner)
        return key

    def _get(self, principal: Principal, key_id: str) -> Key:
        """The key as callers read it: with the uses not flushed yet."""
        return self._usage.with_pending(self._find(principal, key_id))

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
        scoped, page = scoped_page(
            self._pages, principal, "keys", type_name, status, owner, page_size, page_token
        )
        if scoped is None:
            return KeyPage([], "", 0)
        now = self._clock.now()
        found = await self._store.report(
            lambda repo: repo.list_keys(
                now, type_name, status, scoped, page.after, page.size, page.total
            ),
            principal.name,
        )
        keys, cut = fitted([self._usage.with_pending(k) for k in found.items], _weight)
        more = found.more or cut
        return KeyPage(keys, token_after(page, keys, more, found.total), found.total)

    async def statistics(self, principal: Principal) -> Report:
        principal.require(Permission.STATS_READ)
        now = self._clock.now()

        def work(repo: Repository) -> Report:
            return report(
                repo.key_counts(now), recent(repo.event_counts, now, "key"), now, handles=False
            )

        return await self._store.report(work, principal.name)

    async def flush_usage(self) -> None:
        """Persist the usage counted since the last flush (called periodically)."""
        await self._usage.flush()

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
        key_type = self._config.key_type(type_name)
        if key_type is None:
            known = ", ".join(sorted(self._config.current.key_types))
            raise InvalidArgument(
                f"unknown key type {limits.quote(type_name)}; one of {known}", field="type"
            )
        if reveal:
            principal.require(Permission.KEY_EXPORT)
            if not key_type.exportable:
                raise FailedPrecondition(
                    f"keys of type {limits.quote(type_name)} are not exportable; use them in place",
                    reason="KEY_NOT_EXPORTABLE",
                )
        secret, public_pem = await self._lifecycle.maker.make(
            key_type.algorithm, key_type.key_length, principal.name
        )
        key_id = new_id("key")

        def work(repo: Repository) -> Key:
            now = self._clock.now()
            cap = self._config.current.policies.max_keys_per_owner
            if not repo.claim_key_slot(principal.name, cap):
                held = repo.count_keys(principal.name)
                raise ResourceExhausted(
                    f"{principal.name!r} already has {held} keys (max_keys_per_owner is "
                    f"{cap}); remove some (they count until destroyed)",
                    reason="MAX_KEYS_PER_OWNER",
                    retry_after=self.destroy_delay,
                    metadata={"limit": str(cap)},
                )
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
            repo.insert_version(version, self._material.seal(key_id, 1, secret))
            self._journal.event(repo, EventKind.CREATED, key, reason="generated")
            details = {"algorithm": key.algorithm, "type": type_name}
            if reveal:
                details["revealed_version"] = "1"
            self._journal.audit(
                repo,
                "key.generate",
                about=key,
                by=principal,
                user_id=user_id,
                details=details,
                time=now,
            )
            return key

        key = await self._store.write(work, principal.name)
        self._stats.observe("generate_key", time.perf_counter() - started)
        return key, (secret if reveal else None)

    async def rotate(self, principal: Principal, key_id: str, user_id: str, reason: str) -> Key:
        principal.require(Permission.KEY_MANAGE)
        limits.raise_if(limits.common(user_id, reason))
        key = self._get(principal, key_id)
        # Refused before material is made and before the writer reads every version.
        _require_version_room(principal, key, self._clock.now())
        secret, public_pem = await self._lifecycle.maker.make(
            key.algorithm, key.key_length, principal.name
        )

        def work(repo: Repository) -> Key:
            current = self._locked(repo, principal, key_id)
            if current.state is not KeyState.ACTIVE and current.state is not KeyState.EXPIRED:
                raise FailedPrecondition(
                    f"key {key_id!r} is {current.state.value.lower()}; only active or expired "
                    "keys can be rotated",
                    reason="KEY_NOT_ROTATABLE",
                )
            _require_version_room(principal, current, self._clock.now())
            return self._lifecycle.add_primary(
                repo,
                current,
                secret=secret,
                public_pem=public_pem,
                by=principal,
                user_id=user_id,
                reason=reason or "manual",
            )

        return await self._store.write(work, principal.name)

    async def remove(self, principal: Principal, key_id: str, user_id: str, reason: str) -> Key:
        principal.require(Permission.KEY_MANAGE)
        limits.raise_if(limits.common(user_id, reason))

        def work(repo: Repository) -> Key:
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
                # notify_time is kept (the scheduler passes removed keys by): a restore
                # brings back the warning still owed, and only that.
            )
            repo.update_key(removed)
            self._journal.event(
                repo,
                EventKind.REMOVED,
                removed,
                reason=reason or "removed",
                deadline=removed.destroy_time,
            )
            self._journal.audit(
                repo,
                "key.remove",
                about=removed,
                by=principal,
                user_id=user_id,
                reason=reason,
                details={"destroy_time": _iso(removed.destroy_time)},
                time=now,
            )
            return removed

        key = await self._store.write(work, principal.name)
        self._material.forget(key_id)
        return key

    async def restore(self, principal: Principal, key_id: str, user_id: str, reason: str) -> Key:
        principal.require(Permission.KEY_MANAGE)
        limits.raise_if(limits.common(user_id, reason))

        def work(repo: Repository) -> Key:
            key = self._locked(repo, principal, key_id)
            if key.state is not KeyState.REMOVED:
                raise FailedPrecondition(
                    f"key {key_id!r} is {key.state.value.lower()}; only a removed key whose "
                    "destruction is still pending can be restored",
                    reason="KEY_NOT_REMOVED",
                )
            now = self._clock.now()
            if key.destroyed_by(now):
                # The scheduler may not have wiped it yet (behind after a stop, or without
                # a leader), but the pending period the remover was promised is over.
                raise FailedPrecondition(
                    f"key {key_id!r} was due for destruction at "
                    f"{key.destroy_time.isoformat() if key.destroy_time else ''}; "
                    "it can no longer be restored",
                    reason="KEY_DESTROYED",
                )
            restored = dataclasses.replace(
                key,
                state=key.restore_state or KeyState.ACTIVE,
                restore_state=None,
                destroy_time=None,
                notify_time=_owed_warning(key, now),
            )
            repo.update_key(restored)
            self._journal.event(repo, EventKind.RESTORED, restored, reason=reason or "restored")
            self._journal.audit(
                repo,
                "key.restore",
                about=restored,
                by=principal,
                user_id=user_id,
                reason=reason,
                time=now,
            )
            return restored

        return await self._store.write(work, principal.name)

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
        now = self._clock.now()
        require_usable(key, now, allow_expired=False)
        loaded = self._material.load(key, version or key.primary_version, now, principal, "export")

        def work(repo: Repository) -> None:
            self._journal.audit(
                repo,
                "key.export",
                about=key,
                by=principal,
                user_id=user_id,
                reason=reason,
                details={"version": str(loaded.version)},
            )

        # The export is durable in the audit log before it leaves.
        await self._store.write(work, principal.name)
        return loaded.material, loaded.version, key.algorithm

    def _locked(self, repo: Repository, principal: Principal, key_id: str) -> Key:
        check_id("key", key_id, "key_id")
        key = repo.get_key(key_id, for_update=True)
        if key is None:
            raise NotFound(f"key {key_id!r} not found", reason="KEY_NOT_FOUND")
        principal.require_visible("key", key_id, key.owner)
        return key


def _iso(when: datetime | None) -> str:
    return "" if when is None else when.isoformat()


def _owed_warning(removed: Key, now: datetime) -> datetime | None:
    """When a restored key's next warning is due: the one it still owed when removed
    (at once if its time passed meanwhile, naming the deadline it was for). Before, a
    key removed ahead of its warning window and restored inside it was never warned.
    Removal used to clear it: for a key removed so, the window's start if still ahead."""
    if removed.notify_time is not None:
        return removed.notify_time
    return removed.warn_time if removed.warn_time and removed.warn_time > now else None


def _require_version_room(principal: Principal, key: Key, now: datetime) -> None:
    """Refuse a service's rotation of a key that holds MAX_ENABLED_VERSIONS live
    versions, until the first of them expires. Operators and admins always rotate."""
    if principal.role in (Role.ADMIN, Role.OPERATOR):
        return
    # Disabled versions count: they are read and carried like enabled ones, and a service
    # that could disable its way under the cap would grow a key without bound again.
    enabled = [v for v in key.versions if v.live(now)]
    if len(enabled) < MAX_ENABLED_VERSIONS:
        return
    first = min(v.expire_time for v in enabled)
    raise ResourceExhausted(
        f"key {key.id!r} has {len(enabled)} live (enabled or disabled) versions, as many as "
        "a key may hold; "
        "each stays enabled until its max lifetime; an operator or admin can still rotate it",
        reason="MAX_KEY_VERSIONS",
        retry_after=max(first - now, timedelta(seconds=1)),
        metadata={"limit": str(MAX_ENABLED_VERSIONS)},
    )


def _weight(key: Key) -> int:
    """About what a key adds to a listing's answer (paging.fitted)."""
    return RECORD_BYTES + mapping_weight(key.metadata) + VERSION_BYTES * len(key.versions)
