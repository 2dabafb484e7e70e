"""Anomalies: suspicious uses of handles, how severe they are, and what they trigger."""

from __future__ import annotations

import enum
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta


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
    """Counts refused tokens per peer over a sliding window and reports a flood once per window.

    Held in memory: a flood is a property of live traffic, and restarting the server
    resets the window, which only delays a report by at most one window.
    """

    def __init__(self, threshold: int = 20, window: timedelta = timedelta(minutes=1)) -> None:
        self.threshold = threshold
        self.window = window
        self._seen: dict[str, deque[datetime]] = {}
        self._reported: dict[str, datetime] = {}

    def record(self, peer: str, now: datetime) -> int | None:
        """Record one refused token; return the count when this one makes a new flood."""
        times = self._seen.setdefault(peer, deque())
        times.append(now)
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if len(self._seen) > 10_000:
            self._forget_idle(horizon)
        if len(times) < self.threshold:
            return None
        last = self._reported.get(peer)
        if last is not None and last > horizon:
            return None
        self._reported[peer] = now
        return len(times)

    def _forget_idle(self, horizon: datetime) -> None:
        for peer in [p for p, t in self._seen.items() if not t or t[-1] <= horizon]:
            del self._seen[peer]
            self._reported.pop(peer, None)
