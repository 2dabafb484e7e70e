"""Anomalies: suspicious uses of handles, how severe they are, and what they trigger."""

from __future__ import annotations

import enum
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


class AnomalyKind(enum.Enum):
    CONTEXT_DRIFT = "CONTEXT_DRIFT"
    RATE_LIMIT_BURST = "RATE_LIMIT_BURST"
    USE_AFTER_REVOCATION = "USE_AFTER_REVOCATION"
    USE_AFTER_EXHAUSTION = "USE_AFTER_EXHAUSTION"
    USE_AFTER_EXPIRY = "USE_AFTER_EXPIRY"
    TOKEN_REUSE = "TOKEN_REUSE"
    INVALID_TOKEN_FLOOD = "INVALID_TOKEN_FLOOD"


class Severity(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


class AnomalyAction(enum.Enum):
    FLAGGED = "FLAGGED"
    REVOKED = "REVOKED"


SEVERITY: dict[AnomalyKind, Severity] = {
    AnomalyKind.CONTEXT_DRIFT: Severity.HIGH,
    AnomalyKind.RATE_LIMIT_BURST: Severity.MEDIUM,
    AnomalyKind.USE_AFTER_REVOCATION: Severity.HIGH,
    AnomalyKind.USE_AFTER_EXHAUSTION: Severity.MEDIUM,
    AnomalyKind.USE_AFTER_EXPIRY: Severity.LOW,
    # A superseded refresh secret in use means two parties hold it: one is a thief.
    AnomalyKind.TOKEN_REUSE: Severity.CRITICAL,
    AnomalyKind.INVALID_TOKEN_FLOOD: Severity.HIGH,
}


@dataclass(frozen=True)
class Anomaly:
    id: str
    kind: AnomalyKind
    severity: Severity
    action: AnomalyAction
    time: datetime
    handle_id: str
    evidence: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def new(
        kind: AnomalyKind,
        action: AnomalyAction,
        time: datetime,
        handle_id: str,
        evidence: dict[str, str],
    ) -> Anomaly:
        return Anomaly(
            id="anm_" + secrets.token_hex(8),
            kind=kind,
            severity=SEVERITY[kind],
            action=action,
            time=time,
            handle_id=handle_id,
            evidence=evidence,
        )


class InvalidTokenFloodDetector:
    """Counts failures per peer over a sliding window and reports a flood once per window.

    Held in memory: a flood is a property of live traffic, and restarting the server
    resets the window, which only delays a report by at most one window. The table is
    an LRU of fixed capacity with a two-bucket sliding counter per peer, so each record
    is O(1) and memory is bounded however many peers show up. (Handle presentations are
    counted per presenter by :mod:`presenters`; this one serves authentication failures.)
    """

    def __init__(
        self,
        threshold: int = 20,
        window: timedelta = timedelta(minutes=1),
        capacity: int = 8192,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.capacity = capacity
        #: peer -> [window index, previous count, current count, window last reported]
        self._seen: OrderedDict[str, list[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def record(self, peer: str, now: datetime) -> int | None:
        """Record one failure; return the count when this one makes a new flood."""
        elapsed = (now - _EPOCH) / self.window
        index = int(elapsed)
        entry = self._seen.get(peer)
        if entry is None:
            entry = self._seen[peer] = [index, 0, 0, -1]
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(peer)
            if entry[0] != index:
                entry[1] = entry[2] if entry[0] == index - 1 else 0
                entry[2], entry[0] = 0, index
        entry[2] += 1
        count = entry[1] * (1.0 - (elapsed - index)) + entry[2]
        if count < self.threshold or entry[3] == index:
            return None
        entry[3] = index
        return int(count)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
