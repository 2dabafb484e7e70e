"""The durable event log: what happened to which key or handle, in sequence order.

Events are appended in the same store transaction as the change they describe, so an
event exists exactly when its change does. Sequences are assigned by the store and
only grow; WatchExpiring replays them and the live fan-out continues from them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from keyturn_server.domain.anomalies import Anomaly
from keyturn_server.domain.handles import Handle
from keyturn_server.domain.keys import Key


class EventKind(enum.Enum):
    EXPIRING = "EXPIRING"
    ROTATED = "ROTATED"
    EXPIRED = "EXPIRED"
    EXHAUSTED = "EXHAUSTED"
    REMOVED = "REMOVED"
    REVOKED = "REVOKED"
    ANOMALY = "ANOMALY"
    RESTORED = "RESTORED"
    DESTROYED = "DESTROYED"
    CREATED = "CREATED"
    VERSION_DISABLED = "VERSION_DISABLED"
    VERSION_ENABLED = "VERSION_ENABLED"
    # Stream-only kinds, never stored:
    HEARTBEAT = "HEARTBEAT"
    SNAPSHOT_COMPLETE = "SNAPSHOT_COMPLETE"


class Subject(enum.Enum):
    KEY = "key"
    HANDLE = "handle"


@dataclass(frozen=True)
class NewEvent:
    kind: EventKind
    subject: Subject
    subject_id: str
    subject_type: str
    owner: str
    #: The record as it is after the change (None: an anomaly tied to no handle).
    snapshot: Key | Handle | None
    deadline: datetime | None = None
    reason: str = ""
    key_version: int = 0
    anomaly: Anomaly | None = None
    #: A new handle secret for its owner's stream, sealed under the master key.
    sealed_token: bytes | None = None


@dataclass(frozen=True)
class Event:
    sequence: int
    time: datetime
    kind: EventKind
    subject: Subject
    subject_id: str
    subject_type: str
    owner: str
    snapshot: Key | Handle | None
    deadline: datetime | None = None
    reason: str = ""
    key_version: int = 0
    anomaly: Anomaly | None = None
    sealed_token: bytes | None = None
