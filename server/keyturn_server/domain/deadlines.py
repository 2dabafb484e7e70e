"""Deadlines the scheduler acts on: their kinds, and the records they name.

Each kind has its own partial index in the store, so the scheduler asks for the earliest
deadline of a kind, and for the records whose deadline has passed, without a scan.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class DeadlineKind(enum.Enum):
    #: An active key's next rotation (acted on only while rotation is enforced).
    KEY_ROTATE = "key.rotate"
    #: An active key's primary version reaches its max lifetime.
    KEY_EXPIRE = "key.expire"
    #: Any enabled version reaches its max lifetime: its material is destroyed.
    VERSION_EXPIRE = "version.expire"
    #: An active key enters a warning window (EXPIRING event).
    KEY_NOTIFY = "key.notify"
    #: A removed key's waiting period is over: it is destroyed.
    KEY_DESTROY = "key.destroy"
    #: An active or exhausted handle reaches its max lifetime.
    HANDLE_EXPIRE = "handle.expire"
    #: An active handle's automatic rotation (only while rotation is enforced).
    HANDLE_ROTATE = "handle.rotate"
    #: An active handle enters a warning window (EXPIRING event).
    HANDLE_NOTIFY = "handle.notify"
    #: A superseded secret's grace ends: its sealed successor can no longer be collected.
    SECRET_GRACE = "secret.grace"

    @property
    def is_rotation(self) -> bool:
        """Rotations happen on schedule only while the enforce_rotation policy is on."""
        return self in (DeadlineKind.KEY_ROTATE, DeadlineKind.HANDLE_ROTATE)


@dataclass(frozen=True)
class Deadline:
    """The earliest deadline of one kind."""

    kind: DeadlineKind
    time: datetime


@dataclass(frozen=True)
class VersionRef:
    """One version of a key."""

    key_id: str
    version: int


@dataclass(frozen=True)
class SecretRef:
    """One secret of a handle, by its generation (1 for the secret issued first)."""

    handle_id: str
    generation: int


#: What a due deadline names: a key or handle id, a key version, or a handle secret.
Due = str | VersionRef | SecretRef


@dataclass(frozen=True)
class Overdue:
    """A deadline that has passed: its kind, when it was, and what it names."""

    kind: DeadlineKind
    time: datetime
    ref: Due
