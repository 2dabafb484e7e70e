"""Keys and their versions (the Cloud KMS model): records, status, and deadline rules.

A key has versions; one is primary and does new encryptions, signatures and MACs.
Rotation adds a primary. Every version lives until its own max lifetime; then it
expires and its material is destroyed. RemoveKey schedules destruction of the whole key
after a waiting period, which RestoreKey can cancel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keyturn_server.domain.config import KeyType


class KeyState(enum.Enum):
    """What is stored. EXPIRING is not a state: it is read off the clock (see status)."""

    ACTIVE = "ACTIVE"
    EXPIRED = "EXPIRED"
    REMOVED = "REMOVED"
    DESTROYED = "DESTROYED"


class KeyStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    EXPIRING = "EXPIRING"
    EXPIRED = "EXPIRED"
    REMOVED = "REMOVED"
    DESTROYED = "DESTROYED"


class VersionState(enum.Enum):
    ENABLED = "ENABLED"
    EXPIRED = "EXPIRED"
    DESTROYED = "DESTROYED"
    #: Turned off by a caller (a suspected compromise): material kept, every use refused
    #: until it is enabled again; it still expires at its max lifetime.
    DISABLED = "DISABLED"


class Disabler(enum.Enum):
    """Who disabled a version, which decides who may enable it again: what an operator
    (or an admin) disabled is an incident's containment, and its owner's token, perhaps
    the stolen credential being contained, may not undo it."""

    OWNER = "OWNER"
    OPERATOR = "OPERATOR"


#: States whose material is still stored: the version expires at its max lifetime.
LIVE_VERSION_STATES = (VersionState.ENABLED, VersionState.DISABLED)


@dataclass(frozen=True)
class KeyVersion:
    key_id: str
    version: int
    state: VersionState
    create_time: datetime
    expire_time: datetime
    destroy_time: datetime | None = None
    public_pem: str | None = None
    #: Who disabled it, while DISABLED, and kept once it expires so: what expired while
    #: disabled stays refused (no public key either). None when never disabled or
    #: enabled again.
    disabled_by: Disabler | None = None

    @property
    def usable(self) -> bool:
        return self.state is VersionState.ENABLED

    def live(self, now: datetime) -> bool:
        """Material still stored and its max lifetime not reached (enabled or disabled)."""
        return self.state in LIVE_VERSION_STATES and now < self.expire_time


@dataclass(frozen=True)
class KeySchedule:
    """The type's timings, copied onto the key at creation: changing a type affects new
    keys only."""

    rotation_interval: timedelta
    warning_threshold: timedelta
    max_lifetime: timedelta

    @staticmethod
    def of(key_type: KeyType) -> KeySchedule:
        return KeySchedule(
            key_type.rotation_interval, key_type.warning_threshold, key_type.max_lifetime
        )


@dataclass(frozen=True)
class Key:
    id: str
    type: str
    algorithm: str
    key_length: int
    state: KeyState
    primary_version: int
    owner: str
    created_for: str
    metadata: dict[str, str]
    create_time: datetime
    schedule: KeySchedule
    exportable: bool
    #: When the scheduler rotates (None: never, e.g. once removed).
    next_rotation_time: datetime | None
    #: When the primary version reaches its max lifetime.
    expire_time: datetime
    #: Start of the warning window of the next rotation (or expiry, if sooner).
    warn_time: datetime | None
    #: When the next EXPIRING event is due; None once announced.
    notify_time: datetime | None = None
    destroy_time: datetime | None = None
    usage_count: int = 0
    last_used_time: datetime | None = None
    #: State to return to on RestoreKey.
    restore_state: KeyState | None = None
    versions: tuple[KeyVersion, ...] = field(default=())

    def status(self, now: datetime) -> KeyStatus:
        if self.destroyed_by(now):
            return KeyStatus.DESTROYED
        if self.state is not KeyState.ACTIVE:
            return KeyStatus(self.state.value)
        if now >= self.expire_time:
            return KeyStatus.EXPIRED
        if self.warn_time is not None and now >= self.warn_time:
            return KeyStatus.EXPIRING
        return KeyStatus.ACTIVE

    def destroyed_by(self, now: datetime) -> bool:
        """Removed and past its destroy time: destroyed as far as any caller is concerned,
        whether or not the scheduler (behind after a stop, or leaderless) has wiped it."""
        return (
            self.state is KeyState.REMOVED
            and self.destroy_time is not None
            and now >= self.destroy_time
        )

    def version(self, number: int) -> KeyVersion | None:
        for v in self.versions:
            if v.version == number:
                return v
        return None


def primary_deadlines(
    create_time: datetime, schedule: KeySchedule
) -> tuple[datetime, datetime, datetime]:
    """(next rotation, primary expiry, warn time) for a primary created at ``create_time``.

    The warning window opens ahead of the rotation (validation keeps rotation <= max
    lifetime), so dependants hear of a new version before it is made.
    """
    rotation = create_time + schedule.rotation_interval
    expiry = create_time + schedule.max_lifetime
    return rotation, expiry, min(rotation, expiry) - schedule.warning_threshold


def warning_deadline(key: Key, now: datetime) -> datetime:
    """The deadline an EXPIRING warning due at ``now`` refers to: the rotation while it is
    ahead, else the expiry (rotation not enforced, or overdue)."""
    if key.next_rotation_time is not None and key.next_rotation_time > now:
        return min(key.next_rotation_time, key.expire_time)
    return key.expire_time
