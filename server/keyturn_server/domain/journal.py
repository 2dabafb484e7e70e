"""The journal: one place that records what happened, inside the unit of work that made it
happen. An event tells watchers about a key or a handle; an audit entry records who did
what, on whose behalf and why; an anomaly is both. Services and the scheduler alike
write through here, with keyword arguments, so every entry has the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from keyturn_server.clock import Clock
from keyturn_server.domain.access import SYSTEM, Principal
from keyturn_server.domain.anomalies import Anomaly
from keyturn_server.domain.audit import AuditDraft, AuditEntry, AuditLog
from keyturn_server.domain.events import EventKind, NewEvent, Subject
from keyturn_server.domain.handles import Handle
from keyturn_server.domain.keys import Key
from keyturn_server.domain.repositories import Repository


@dataclass(frozen=True)
class Resource:
    """What an audit entry is about, when it is not a key or a handle."""

    type: str
    id: str = ""


class Journal:
    def __init__(self, audit: AuditLog, clock: Clock) -> None:
        self._audit = audit
        self._clock = clock

    def event(
        self,
        repo: Repository,
        kind: EventKind,
        record: Key | Handle,
        *,
        reason: str,
        deadline: datetime | None = None,
        version: int = 0,
        sealed_token: bytes | None = None,
    ) -> None:
        """An event about ``record`` as it is after the change; ``sealed_token`` is a new
        handle secret for its owner's stream, sealed."""
        subject = Subject.KEY if isinstance(record, Key) else Subject.HANDLE
        repo.append_event(
            NewEvent(
                kind,
                subject,
                record.id,
                record.type,
                record.owner,
                record,
                deadline=deadline,
                reason=reason,
                key_version=version,
                sealed_token=sealed_token,
            ),
            self._clock.now(),
        )

    def audit(
        self,
        repo: Repository,
        action: str,
        *,
        about: Key | Handle | Resource,
        by: Principal | None = SYSTEM,
        user_id: str = "",
        reason: str = "",
        details: dict[str, str] | None = None,
        outcome: str = "ok",
        peer: str | None = None,
        time: datetime | None = None,
    ) -> AuditEntry:
        """An audit entry: ``by`` acted (None: nobody known, e.g. a failed login) on
        ``about``, on behalf of ``user_id``; ``peer`` defaults to the actor's."""
        if isinstance(about, Key):
            resource = Resource("key", about.id)
        elif isinstance(about, Handle):
            resource = Resource("handle", about.id)
        else:
            resource = about
        draft = AuditDraft(
            action=action,
            principal=by.name if by else "",
            role=by.role.value if by else "",
            resource_type=resource.type,
            resource_id=resource.id,
            user_id=user_id,
            reason=reason,
            peer=(by.peer if by else "") if peer is None else peer,
            outcome=outcome,
            details=details or {},
        )
        return self._audit.record(repo, time or self._clock.now(), draft)

    def anomaly(self, repo: Repository, anomaly: Anomaly, handle: Handle | None) -> None:
        """An anomaly (on ``handle``, or on no handle, like a flood of unknown tokens):
        kept for statistics, streamed to watchers, and audited."""
        repo.insert_anomaly(anomaly)
        repo.append_event(
            NewEvent(
                EventKind.ANOMALY,
                Subject.HANDLE,
                anomaly.handle_id,
                handle.type if handle else "",
                handle.owner if handle else "",
                handle,
                reason=anomaly.kind.value,
                anomaly=anomaly,
            ),
            anomaly.time,
        )
        details = {
            "kind": anomaly.kind.value,
            "severity": anomaly.severity.name,
            "action": anomaly.action.value,
            "anomaly_id": anomaly.id,
        }
        details.update({f"evidence.{k}": v for k, v in anomaly.evidence.items()})
        self.audit(
            repo,
            "handle.anomaly",
            about=Resource("handle", anomaly.handle_id),
            outcome="flagged",
            details=details,
            peer="",
            time=anomaly.time,
        )
