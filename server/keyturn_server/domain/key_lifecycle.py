"""What happens to a key over its life, whoever asks: a new primary version (RotateKey,
or the scheduler), warnings, the expiry of the key and of each version, and destruction
after removal. Each step runs inside the caller's unit of work and journals itself; the
scheduler's steps re-check their condition under the row lock and return whether they
acted, so a deadline is acted on once even when passes (or replicas) race.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from keyturn_server.clock import Clock
from keyturn_server.domain.access import Principal
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.deadlines import VersionRef
from keyturn_server.domain.events import EventKind
from keyturn_server.domain.generation import MaterialMaker
from keyturn_server.domain.journal import Journal
from keyturn_server.domain.key_material import MaterialCache
from keyturn_server.domain.keys import (
    LIVE_VERSION_STATES,
    Key,
    KeyState,
    KeyVersion,
    VersionState,
    primary_deadlines,
    warning_deadline,
)
from keyturn_server.domain.repositories import Repository


class KeyLifecycle:
    def __init__(
        self,
        material: MaterialCache,
        config: ConfigService,
        journal: Journal,
        clock: Clock,
        maker: MaterialMaker | None = None,
    ) -> None:
        self._material = material
        self._config = config
        self._journal = journal
        self._clock = clock
        #: Makes new material (expensive kinds bounded per caller and overall).
        self.maker = maker or MaterialMaker()

    def add_primary(
        self,
        repo: Repository,
        key: Key,
        *,
        secret: bytes,
        public_pem: str | None,
        by: Principal,
        user_id: str,
        reason: str,
    ) -> Key:
        """Make a new primary version from ``secret`` (made outside the unit of work)."""
        now = self._clock.now()
        number = max((v.version for v in key.versions), default=0) + 1
        rotation, expiry, warn = primary_deadlines(now, key.schedule)
        version = KeyVersion(key.id, number, VersionState.ENABLED, now, expiry, None, public_pem)
        repo.insert_version(version, self._material.seal(key.id, number, secret))
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
        self._journal.event(
            repo, EventKind.ROTATED, rotated, reason=reason, deadline=rotation, version=number
        )
        self._journal.audit(
            repo,
            "key.rotate",
            about=rotated,
            by=by,
            user_id=user_id,
            reason=reason,
            details={"version": str(number), "previous_version": str(key.primary_version)},
            time=now,
        )
        return rotated

    # --- what the scheduler does at a deadline -------------------------------------------

    def expire(self, repo: Repository, key_id: str, now: datetime) -> bool:
        """The primary reached its max lifetime and no rotation replaces it."""
        key = repo.get_key(key_id, for_update=True)
        if key is None or key.state is not KeyState.ACTIVE or key.expire_time > now:
            return False
        expired = dataclasses.replace(key, state=KeyState.EXPIRED, notify_time=None)
        repo.update_key(expired)
        self._journal.event(
            repo,
            EventKind.EXPIRED,
            expired,
            reason="max lifetime reached",
            deadline=expired.expire_time,
            version=expired.primary_version,
        )
        self._journal.audit(
            repo, "key.expire", about=expired, reason="max lifetime reached", time=now
        )
        return True

    def expire_version(self, repo: Repository, ref: VersionRef, now: datetime) -> bool:
        """A version reached its max lifetime: its material is destroyed (a disabled
        version's too: disabling never extends a version's life)."""
        key = repo.get_key(ref.key_id, for_update=True)
        version = key.version(ref.version) if key else None
        if key is None or version is None or version.state not in LIVE_VERSION_STATES:
            return False
        if version.expire_time > now:
            return False
        repo.update_version(
            dataclasses.replace(version, state=VersionState.EXPIRED, destroy_time=now)
        )
        repo.destroy_material(ref.key_id, ref.version)
        repo.after_commit(lambda: self._material.forget_version(ref.key_id, ref.version))
        updated = repo.get_key(ref.key_id)
        assert updated is not None
        self._journal.event(
            repo,
            EventKind.EXPIRED,
            updated,
            reason=f"version {ref.version} reached its max lifetime; material destroyed",
            deadline=version.expire_time,
            version=ref.version,
        )
        self._journal.audit(
            repo,
            "key.version.expire",
            about=updated,
            reason="max lifetime reached",
            details={"version": str(ref.version)},
            time=now,
        )
        return True

    def warn(self, repo: Repository, key_id: str, now: datetime) -> bool:
        """An EXPIRING event: the key entered the warning window of its next deadline."""
        key = repo.get_key(key_id, for_update=True)
        if key is None or key.state is not KeyState.ACTIVE:
            return False
        if key.notify_time is None or key.notify_time > now:
            return False
        if key.expire_time <= now:
            # Its primary's life is over (caught up late): replaced or expired, unwarned.
            # The warning is dropped, not left due: a batch of them, due ahead of the
            # rotations that replace the primaries, kept the scheduler spinning on them.
            repo.update_key(dataclasses.replace(key, notify_time=None))
            return True
        # Judged from when the window opened: a warning caught up late names its deadline.
        deadline = warning_deadline(key, key.notify_time)
        again: datetime | None = None
        if deadline < key.expire_time:
            # The expiry's own warning follows, not before an enforced rotation (which
            # sets the next one): a rotation no longer enforced leaves it announced.
            again = key.expire_time - key.schedule.warning_threshold
            if self._config.current.policies.enforce_rotation:
                again = max(again, deadline)
        repo.update_key(dataclasses.replace(key, notify_time=again))
        kind = "rotation" if deadline < key.expire_time else "expiry"
        self._journal.event(
            repo,
            EventKind.EXPIRING,
            key,
            reason=f"{kind} at {deadline.isoformat()}",
            deadline=deadline,
            version=key.primary_version,
        )
        return True

    def destroy(self, repo: Repository, key_id: str, now: datetime) -> bool:
        """A removed key's waiting period is over: every version's material goes."""
        key = repo.get_key(key_id, for_update=True)
        if key is None or key.state is not KeyState.REMOVED:
            return False
        if key.destroy_time is None or key.destroy_time > now:
            return False
        versions = []
        for version in key.versions:
            repo.destroy_material(key_id, version.version)
            done = dataclasses.replace(
                version, state=VersionState.DESTROYED, destroy_time=version.destroy_time or now
            )
            repo.update_version(done)
            versions.append(done)
        destroyed = dataclasses.replace(
            key,
            state=KeyState.DESTROYED,
            restore_state=None,
            next_rotation_time=None,
            notify_time=None,
            versions=tuple(versions),
        )
        repo.update_key(destroyed)
        repo.release_key_slot(key.owner)
        repo.after_commit(lambda: self._material.forget(key_id))
        self._journal.event(
            repo,
            EventKind.DESTROYED,
            destroyed,
            reason="waiting period over",
            deadline=key.destroy_time,
        )
        self._journal.audit(
            repo, "key.destroy", about=destroyed, reason="waiting period over", time=now
        )
        return True
