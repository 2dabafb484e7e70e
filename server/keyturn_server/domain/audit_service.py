"""Reading and verifying the audit log (auditors, operators and admins)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from keyturn_server.domain.access import MAX_PRINCIPAL, Permission, Principal
from keyturn_server.domain.audit import AuditChain, AuditEntry, AuditQuery, ChainCursor
from keyturn_server.domain.errors import FieldViolation, InvalidArgument
from keyturn_server.domain.limits import raise_if, text
from keyturn_server.domain.paging import PageTokens, carried_total, checked_page_size
from keyturn_server.domain.repositories import AuditRepository, Store
from keyturn_server.domain.statistics import Statistics

log = logging.getLogger("keyturn.security")


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntry]
    next_page_token: str
    total_size: int


@dataclass(frozen=True)
class Verification:
    valid: bool
    checked: int
    first_broken: int
    problem: str
    head: bytes
    #: The first entry the log keeps: 1, or the one after the last pruned under the
    #: audit retention.
    first_sequence: int = 1


#: Entries checked per read of the store. One snapshot held over the whole log (minutes
#: for millions of entries) kept SQLite's write-ahead log from being checkpointed, so it
#: grew with every write meanwhile, and kept PostgreSQL from vacuuming.
PART = 20_000


class AuditService:
    """Lists and verifies the audit log. A verification that finds the chain broken is
    counted (``stats.audit_breaks``, the listeners: metrics) and said in the log once per
    break, not once per verification: before, only its caller learnt of it, and the
    on-call saw nothing in health, metrics or the log."""

    def __init__(
        self,
        store: Store,
        chain: AuditChain,
        pages: PageTokens,
        stats: Statistics | None = None,
    ) -> None:
        self._store = store
        self._chain = chain
        self._pages = pages
        self._stats = stats or Statistics()
        #: Called with every verdict (metrics count them by result).
        self.listeners: list[Callable[[Verification], None]] = []

    async def list_entries(
        self, principal: Principal, query: AuditQuery, page_size: int, page_token: str
    ) -> AuditPage:
        principal.require(Permission.AUDIT_READ)
        violations: list[FieldViolation] = []
        for name in ("action", "resource_id"):
            text(name, getattr(query, name), 128, violations)
        text("principal", query.principal, MAX_PRINCIPAL, violations)
        raise_if(violations)
        size = checked_page_size(page_size)
        binding = _binding(query, principal)
        after: int | None = None
        total: int | None = None
        if page_token:
            cursor = self._pages.open(page_token, binding)
            after, total = cursor.get("s"), carried_total(cursor)
            if not isinstance(after, int):
                raise InvalidArgument("not a page token from this service", field="page_token")
        found = await self._store.report(
            lambda repo: repo.list_audit(query, after, size, total), principal.name
        )
        entries = found.items
        token = ""
        if found.more and entries:
            token = self._pages.issue({"s": entries[-1].sequence, "n": found.total}, binding)
        return AuditPage(entries, token, found.total)

    async def verify(self, principal: Principal) -> Verification:
        """Check the whole chain, PART entries per read of the store."""
        principal.require(Permission.AUDIT_READ)
        cursor: ChainCursor | None = None
        while True:
            step = partial(self._verify_part, cursor)
            part = await self._store.report(step, principal.name)
            if isinstance(part, Verification):
                self._verified(part)
                return part
            cursor = part

    def _verified(self, verdict: Verification) -> None:
        stats = self._stats
        if not verdict.valid:
            found = f"broken at entry {verdict.first_broken}: {verdict.problem}"
            stats.audit_breaks += 1
            if found != stats.audit_break:
                log.error(
                    "the audit log failed verification: entries were altered, removed or "
                    "forged outside Keyturn",
                    extra={
                        "category": "security",
                        "first_broken": verdict.first_broken,
                        "problem": verdict.problem,
                    },
                )
            stats.audit_break = found
        elif stats.audit_break:
            log.warning("the audit log verifies again", extra={"category": "security"})
            stats.audit_break = ""
        for listener in self.listeners:
            listener(verdict)

    def _verify_part(
        self, cursor: ChainCursor | None, repo: AuditRepository
    ) -> Verification | ChainCursor:
        """Check the next PART entries after ``cursor`` (None: from the start); the
        verdict at the end of the log or at the first broken link, else the cursor to go
        on from."""
        base = repo.audit_base()
        first = 1 if base is None else base.sequence + 1
        if base is not None and base.problem:
            return Verification(False, 0, first, base.problem, b"", first)
        if cursor is None:
            cursor = ChainCursor.after(base)
            # Nothing may stand before the start: what the retention removed is gone.
            oldest = next(iter(repo.iter_audit(0, 1)), None)
            if oldest is not None and oldest.sequence < cursor.expected:
                broken, problem = self._chain.check([oldest], cursor)
                return Verification(False, 1, broken, problem, b"", first)
        elif base is not None and base.sequence >= cursor.expected:
            # The retention pruned entries this verification had not reached yet: what
            # is kept goes on from the new start.
            cursor = ChainCursor(base.sequence + 1, base.hash, cursor.checked, base)
        entries = list(repo.iter_audit(cursor.expected - 1, PART))
        broken, problem = self._chain.check(entries, cursor)
        if broken:
            return Verification(False, cursor.checked, broken, problem, b"", first)
        if len(entries) == PART:
            return cursor
        # The end of the log, as this read sees it: its anchor must name the last entry.
        head = repo.audit_head()
        last_hash = b""
        if head is not None and head.problem:
            broken, problem = head.sequence or 1, head.problem
        elif head is not None:
            newest = repo.list_audit(AuditQuery(descending=True), None, 1, total=0).items
            last = newest[0] if newest else None
            if last is None or last.sequence != head.sequence or last.hash.hex() != head.hash_hex:
                broken = head.sequence
                problem = (
                    f"the log ends before entry {head.sequence}, the last one written: "
                    "entries were removed from its end"
                )
            else:
                last_hash = last.hash
        return Verification(not broken, cursor.checked, broken, problem, last_hash, first)


def _binding(query: AuditQuery, principal: Principal) -> tuple[object, ...]:
    """What a page token of the audit log is bound to: its filters and its caller."""
    q = query
    return (
        "audit",
        q.action,
        q.principal,
        q.resource_id,
        q.start,
        q.end,
        q.descending,
        principal.name,
    )
