"""Disabling and enabling one key version: how a compromised version is contained without
stopping its key (Cloud KMS's DisableCryptoKeyVersion, Vault's min_decryption_version).

A leaked signing or MAC version would otherwise verify forgeries, and a leaked encryption
version decrypt, until its own max lifetime (up to a year), and RemoveKey stops the whole
key. A disabled version keeps its material (enabling it again undoes a mistake) but every
use of it is refused with VERSION_DISABLED (key_material.require_version_usable); it still
expires, and its material is destroyed, at its max lifetime.

Rules: the primary cannot be disabled (rotate first, so that new ciphertexts and
signatures have a version to come from); a version past its max lifetime cannot change;
a repeat finds the version as asked and changes nothing, so clients may retry. Who may:
whoever may rotate or remove the key (key.manage: its owner, operators and admins), as
Cloud KMS gives cryptoKeyVersions.update to the roles that manage versions; but what an
operator (or an admin) disabled only an operator may enable (PERMISSION_DENIED,
VERSION_DISABLED_BY_OPERATOR): it contains a compromise, and the owner's token may be
the stolen credential. Before, the owner's token enabled it again. An operator's disable
of a version its owner disabled takes the hold over (else a thief who disabled first
would keep the right to undo it); an owner's repeat leaves an operator's hold alone.

Every process sees the change on its next call: a commit moves the store's change stamp,
so each worker and replica reads the key again (key_cache.py) and refuses the version
before touching its cached material, which it also drops (MaterialCache.drop_unusable).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from keyturn_server.clock import Clock
from keyturn_server.domain import limits
from keyturn_server.domain.access import Permission, Principal
from keyturn_server.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from keyturn_server.domain.events import EventKind
from keyturn_server.domain.journal import Journal, Resource
from keyturn_server.domain.key_material import MaterialCache
from keyturn_server.domain.keys import Disabler, Key, KeyState, KeyVersion, VersionState
from keyturn_server.domain.repositories import Repository, Store

HELD_BY_OPERATOR = "VERSION_DISABLED_BY_OPERATOR"

#: The key, locked for update inside a unit of work, if the principal may see it.
LockedFinder = Callable[[Repository, Principal, str], Key]


class KeyVersions:
    def __init__(
        self,
        store: Store,
        locked: LockedFinder,
        journal: Journal,
        material: MaterialCache,
        clock: Clock,
    ) -> None:
        self._store = store
        self._locked = locked
        self._journal = journal
        self._material = material
        self._clock = clock

    async def disable(
        self, principal: Principal, key_id: str, version: int, user_id: str, reason: str
    ) -> Key:
        """Refuse every use of ``version`` until it is enabled again."""
        return await self._switch(principal, key_id, version, user_id, reason, disable=True)

    async def enable(
        self, principal: Principal, key_id: str, version: int, user_id: str, reason: str
    ) -> Key:
        """Let a disabled ``version`` be used again, until its max lifetime."""
        return await self._switch(principal, key_id, version, user_id, reason, disable=False)

    async def _switch(
        self,
        principal: Principal,
        key_id: str,
        number: int,
        user_id: str,
        reason: str,
        *,
        disable: bool,
    ) -> Key:
        principal.require(Permission.KEY_MANAGE)
        limits.raise_if(limits.common(user_id, reason))
        if number <= 0:
            raise InvalidArgument("name the version (1 or more)", field="version")
        wanted = VersionState.DISABLED if disable else VersionState.ENABLED
        by = Disabler.OPERATOR if principal.operates() else Disabler.OWNER

        def work(repo: Repository) -> Key:
            key = self._locked(repo, principal, key_id)
            now = self._clock.now()
            version = key.version(number)
            if version is None:
                raise NotFound(
                    f"key {key_id!r} has no version {number}", reason="VERSION_NOT_FOUND"
                )
            _require_changeable(key, version, now, disable=disable)
            if not disable:
                _require_may_enable(principal, key, version)
            if version.state is wanted:
                if not (disable and _takes_over(version, by)):
                    return key  # a repeat (a retry): nothing to change, nothing to journal
                return self._take_over(repo, principal, key, version, user_id, reason, now)
            changed = dataclasses.replace(
                version, state=wanted, disabled_by=by if disable else None
            )
            repo.update_version(changed)
            updated = dataclasses.replace(
                key,
                versions=tuple(changed if v.version == number else v for v in key.versions),
            )
            verb = "disabled" if disable else "enabled"
            self._journal.event(
                repo,
                EventKind.VERSION_DISABLED if disable else EventKind.VERSION_ENABLED,
                updated,
                reason=reason or f"version {number} {verb}",
                # When its material is destroyed, disabled or not (its max lifetime).
                deadline=version.expire_time,
                version=number,
            )
            self._journal.audit(
                repo,
                "key.version.disable" if disable else "key.version.enable",
                about=updated,
                by=principal,
                user_id=user_id,
                reason=reason,
                details={"version": str(number)},
                time=now,
            )
            if disable:
                repo.after_commit(lambda: self._material.forget_version(key_id, number))
            return updated

        try:
            return await self._store.write(work, principal.name)
        except PermissionDenied as refused:
            if refused.reason == HELD_BY_OPERATOR:
                await self._refused(principal, key_id, number, user_id, reason)
            raise

    async def _refused(
        self, principal: Principal, key_id: str, number: int, user_id: str, reason: str
    ) -> None:
        """An attempt to lift an operator's hold is evidence (the owner's token may be the
        thief's): audited, outcome denied, in a unit of work of its own (the refused
        one rolled back). Each is a call of a caller with rights on the key, within its
        rate limit, as each of its rotations is audited."""
        now = self._clock.now()

        def work(repo: Repository) -> None:
            self._journal.audit(
                repo,
                "key.version.enable",
                about=Resource("key", key_id),
                by=principal,
                user_id=user_id,
                reason=reason,
                outcome="denied",
                details={"version": str(number), "held_by": Disabler.OPERATOR.value},
                time=now,
            )

        await self._store.write(work, principal.name)

    def _take_over(
        self,
        repo: Repository,
        principal: Principal,
        key: Key,
        version: KeyVersion,
        user_id: str,
        reason: str,
        now: datetime,
    ) -> Key:
        """An operator disables what its owner already disabled: the hold becomes the
        operator's. Audited; no event (the version's state did not change)."""
        changed = dataclasses.replace(version, disabled_by=Disabler.OPERATOR)
        repo.update_version(changed)
        kept = tuple(changed if v.version == version.version else v for v in key.versions)
        updated = dataclasses.replace(key, versions=kept)
        self._journal.audit(
            repo,
            "key.version.disable",
            about=updated,
            by=principal,
            user_id=user_id,
            reason=reason,
            details={"version": str(version.version), "held_by": Disabler.OPERATOR.value},
            time=now,
        )
        return updated


def _takes_over(version: KeyVersion, by: Disabler) -> bool:
    return by is Disabler.OPERATOR and version.disabled_by is not Disabler.OPERATOR


def _require_may_enable(principal: Principal, key: Key, version: KeyVersion) -> None:
    """What an operator disabled only an operator (or an admin) enables."""
    if (
        version.state is VersionState.DISABLED
        and version.disabled_by is Disabler.OPERATOR
        and not principal.operates()
    ):
        raise PermissionDenied(
            f"version {version.version} of key {key.id!r} was disabled by an operator: "
            "only an operator or an admin may enable it again",
            reason=HELD_BY_OPERATOR,
            metadata={"version": str(version.version)},
        )


def _require_changeable(key: Key, version: KeyVersion, now: datetime, *, disable: bool) -> None:
    """Whether ``version``'s state may be switched now (see the module's rules)."""
    if key.state is KeyState.DESTROYED or key.destroyed_by(now):
        raise FailedPrecondition(
            f"key {key.id!r} is destroyed; its versions can no longer change",
            reason="KEY_DESTROYED",
        )
    if not version.live(now):
        raise FailedPrecondition(
            f"version {version.version} of key {key.id!r} expired at "
            f"{version.expire_time.isoformat()}; its material is destroyed and it can no "
            "longer be disabled or enabled",
            reason="VERSION_EXPIRED",
        )
    if disable and version.version == key.primary_version:
        raise FailedPrecondition(
            f"version {version.version} is the primary of key {key.id!r}: rotate the key "
            "first, then disable this version",
            reason="VERSION_IS_PRIMARY",
            metadata={"version": str(version.version)},
        )
