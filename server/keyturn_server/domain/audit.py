"""The audit log: every mutation, export, rotation, removal, configuration and token
change, authentication failure and anomaly, hash-chained so that an edit or a deleted
row is detected.

Each entry's hash is HMAC-SHA256, under a key derived from the master key, of the
previous entry's hash and the entry's canonical form. Keyed rather than a plain
SHA-256: whoever can write the database file still cannot forge a consistent chain.
Secrets never enter an entry; where one must be named, its keyed digest is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from keyturn_server.clock import to_micros

if TYPE_CHECKING:
    from keyturn_server.domain.repositories.store import Repository

GENESIS = b"\x00" * 32


@dataclass(frozen=True)
class AuditDraft:
    action: str
    principal: str
    role: str
    resource_type: str = ""
    resource_id: str = ""
    user_id: str = ""
    reason: str = ""
    peer: str = ""
    outcome: str = "ok"
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEntry:
    sequence: int
    time: datetime
    draft: AuditDraft
    hash: bytes
    previous_hash: bytes


@dataclass(frozen=True)
class AuditHead:
    """The last entry written, recorded beside the log under a MAC (the anchor): entries
    removed from the end of the log would otherwise leave a chain that still verifies."""

    sequence: int
    hash_hex: str
    #: Why the anchor cannot be trusted (missing, or its MAC fails); "" when it can.
    problem: str = ""


@dataclass(frozen=True)
class AuditQuery:
    action: str = ""
    principal: str = ""
    resource_id: str = ""
    start: datetime | None = None
    end: datetime | None = None
    descending: bool = False


def canonical(sequence: int, time: datetime, draft: AuditDraft) -> bytes:
    body = {
        "sequence": sequence,
        "time": to_micros(time),
        "action": draft.action,
        "principal": draft.principal,
        "role": draft.role,
        "resource_type": draft.resource_type,
        "resource_id": draft.resource_id,
        "user_id": draft.user_id,
        "reason": draft.reason,
        "peer": draft.peer,
        "outcome": draft.outcome,
        "details": draft.details,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class AuditChain:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def link(self, previous: bytes, sequence: int, time: datetime, draft: AuditDraft) -> bytes:
        return hmac.new(
            self._key, previous + canonical(sequence, time, draft), hashlib.sha256
        ).digest()

    def verify(self, entries: Iterable[AuditEntry]) -> tuple[int, int, str]:
        """(entries checked, first broken sequence or 0, problem)."""
        previous = GENESIS
        expected_sequence: int | None = None
        checked = 0
        for entry in entries:
            checked += 1
            if expected_sequence is not None and entry.sequence != expected_sequence:
                return (
                    checked,
                    entry.sequence,
                    (f"entry {expected_sequence} is missing (next is {entry.sequence})"),
                )
            if entry.previous_hash != previous:
                return checked, entry.sequence, "previous_hash does not match the entry before"
            want = self.link(previous, entry.sequence, entry.time, entry.draft)
            if not hmac.compare_digest(want, entry.hash):
                return checked, entry.sequence, "entry was modified (hash mismatch)"
            previous = entry.hash
            expected_sequence = entry.sequence + 1
        return checked, 0, ""


class AuditLog:
    """Appends entries inside the caller's transaction and mirrors them to the audit
    log stream once committed."""

    def __init__(self, chain: AuditChain, sink: Callable[[AuditEntry], None]) -> None:
        self.chain = chain
        self._sink = sink

    def record(self, repo: Repository, time: datetime, draft: AuditDraft) -> AuditEntry:
        entry = repo.append_audit(
            draft, time, lambda previous, sequence: self.chain.link(previous, sequence, time, draft)
        )
        repo.after_commit(lambda: self._sink(entry))
        return entry
