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
class AuditBase:
    """The newest entry removed under the audit retention, recorded beside the log under
    a MAC, as the anchor is: the log kept starts right after it. Without it, entries
    removed from the start of the log could not be told from entries pruned on purpose."""

    sequence: int
    hash: bytes
    #: Why it cannot be trusted (its MAC fails); "" when it can.
    problem: str = ""


@dataclass(frozen=True)
class AuditPruned:
    """What one pruning removed: entries ``first`` to ``through``, written at or before
    ``before``; ``through_hash`` is the last one's hash, which the kept log links to."""

    first: int
    through: int
    through_hash: bytes
    before: datetime

    @property
    def count(self) -> int:
        return self.through - self.first + 1


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

    def check(self, entries: Iterable[AuditEntry], cursor: ChainCursor) -> tuple[int, str]:
        """Check ``entries`` as the continuation of the chain at ``cursor``, moving it on;
        (first broken sequence or 0, problem)."""
        for entry in entries:
            cursor.checked += 1
            if entry.sequence != cursor.expected:
                return entry.sequence, _gap(cursor.expected, entry.sequence, cursor.base)
            if entry.previous_hash != cursor.previous:
                return entry.sequence, "previous_hash does not match the entry before"
            want = self.link(cursor.previous, entry.sequence, entry.time, entry.draft)
            if not hmac.compare_digest(want, entry.hash):
                return entry.sequence, "entry was modified (hash mismatch)"
            cursor.previous = entry.hash
            cursor.expected = entry.sequence + 1
        return 0, ""


@dataclass
class ChainCursor:
    """Where a verification stands: the next entry expected and the hash it must link to.
    A verification in several parts (each its own read of the store) carries it over."""

    expected: int = 1
    previous: bytes = GENESIS
    checked: int = 0
    #: The pruned start the chain was begun from, for the messages.
    base: AuditBase | None = None

    @classmethod
    def after(cls, base: AuditBase | None) -> ChainCursor:
        if base is None:
            return cls()
        return cls(base.sequence + 1, base.hash, 0, base)


def _gap(expected: int, found: int, base: AuditBase | None) -> str:
    if found < expected:
        return (
            f"entry {found} comes before the log's start at {expected}: pruned entries "
            "were put back"
        )
    if expected == 1:
        return (
            f"the log starts at entry {found}: entries 1 to {found - 1} were removed, and "
            "no pruning under the audit retention records them"
        )
    if base is not None and expected == base.sequence + 1:
        return (
            f"entry {expected} is missing (next is {found}): the audit retention pruned "
            f"only up to entry {base.sequence}"
        )
    return f"entry {expected} is missing (next is {found})"


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
