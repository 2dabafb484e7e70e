"""The audit retention: entries older than it are deleted from the store, oldest first,
and the deletion itself is audited.

Every handle generated or rotated, every key change and every refused login adds an
entry, and nothing used to remove one: a service that issues a few handles a second
grows the log by about a million entries a day, until the disk is full and every write
fails. The log stream (the JSON log, ``category: audit``) carries every entry as it is
written, with its sequence and hash, for a record kept longer elsewhere.

The kept log stays one verifiable chain: the newest entry removed is recorded as its
base, under a MAC (``store/sql/audit.py``), and the first entry kept links to it. Each
pruning writes an ``audit.prune`` entry naming what it removed, in the same
transaction. The newest entry is never removed, so the anchor always names an entry that
is there.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from keyturn_server.domain.audit import AuditPruned
from keyturn_server.domain.journal import Journal, Resource
from keyturn_server.domain.repositories import Repository

#: Entries deleted per transaction. Each deletion updates the log's three indexes, and
#: on SQLite the transaction runs on the event loop: a few milliseconds at a time.
BATCH = 500


class AuditRetention:
    def __init__(self, journal: Journal, retention: timedelta | None) -> None:
        self._journal = journal
        #: None: the log is kept for ever.
        self.retention = retention

    def deadline(self, reader: Repository) -> datetime | None:
        """When the oldest entry that may be pruned passes the retention."""
        if self.retention is None:
            return None
        oldest = reader.oldest_prunable_audit()
        return None if oldest is None else oldest + self.retention

    def due(self, reader: Repository, now: datetime) -> bool:
        deadline = self.deadline(reader)
        return deadline is not None and deadline <= now

    def prune(self, repo: Repository, now: datetime) -> AuditPruned | None:
        """Delete one batch of entries older than the retention, and audit it."""
        assert self.retention is not None
        pruned = repo.prune_audit(now - self.retention, BATCH)
        if pruned is not None:
            self._journal.audit(
                repo,
                "audit.prune",
                about=Resource("audit", f"{pruned.first}-{pruned.through}"),
                reason="older than the audit retention",
                details={
                    "first_sequence": str(pruned.first),
                    "through_sequence": str(pruned.through),
                    "through_hash": pruned.through_hash.hex(),
                    "cutoff": pruned.before.isoformat(),
                },
                time=now,
            )
        return pruned
