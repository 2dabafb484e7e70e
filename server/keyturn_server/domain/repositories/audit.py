"""The hash-chained audit log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Protocol

from keyturn_server.domain.audit import (
    AuditBase,
    AuditDraft,
    AuditEntry,
    AuditHead,
    AuditPruned,
    AuditQuery,
)
from keyturn_server.domain.paging import Listing


class AuditRepository(Protocol):
    def append_audit(
        self, draft: AuditDraft, time: datetime, link: Callable[[bytes, int], bytes]
    ) -> AuditEntry:
        """Append the next entry; ``link(previous hash, sequence)`` is its hash."""
        ...

    def audit_head(self) -> AuditHead | None:
        """The last entry written, as recorded beside the log."""
        ...

    def audit_base(self) -> AuditBase | None:
        """The newest entry pruned under the retention; None when none ever was."""
        ...

    def oldest_prunable_audit(self) -> datetime | None:
        """The time of the oldest entry that is not the newest (which is never pruned)."""
        ...

    def prune_audit(self, before: datetime, limit: int) -> AuditPruned | None:
        """Delete the oldest entries written at or before ``before``, at most ``limit``, never
        the newest, and record the last one deleted as the log's base."""
        ...

    def list_audit(
        self, query: AuditQuery, after: int | None, limit: int, total: int | None = None
    ) -> Listing[AuditEntry]:
        """One page of the entries ``query`` selects; their total is counted unless
        ``total`` (counted for an earlier page) is given."""
        ...

    def iter_audit(self, after: int = 0, limit: int | None = None) -> Iterator[AuditEntry]:
        """The entries after sequence ``after``, in order, at most ``limit``."""
        ...
