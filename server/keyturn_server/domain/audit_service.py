"""Reading and verifying the audit log (auditors, operators and admins)."""

from __future__ import annotations

from dataclasses import dataclass

from keyturn_server.domain.access import Permission, Principal
from keyturn_server.domain.audit import AuditChain, AuditEntry, AuditQuery
from keyturn_server.domain.errors import FieldViolation, InvalidArgument
from keyturn_server.domain.limits import raise_if, text
from keyturn_server.domain.paging import PageTokens, checked_page_size
from keyturn_server.domain.repositories import AuditRepository, Store


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


class AuditService:
    def __init__(self, store: Store, chain: AuditChain, pages: PageTokens) -> None:
        self._store = store
        self._chain = chain
        self._pages = pages

    async def list_entries(
        self, principal: Principal, query: AuditQuery, page_size: int, page_token: str
    ) -> AuditPage:
        principal.require(Permission.AUDIT_READ)
        violations: list[FieldViolation] = []
        for name in ("action", "principal", "resource_id"):
            text(name, getattr(query, name), 128, violations)
        raise_if(violations)
        size = checked_page_size(page_size)
        binding = _binding(query, principal)
        after: int | None = None
        if page_token:
            after = self._pages.open(page_token, binding).get("s")
            if not isinstance(after, int):
                raise InvalidArgument("not a page token from this service", field="page_token")
        found = await self._store.report(
            lambda repo: repo.list_audit(query, after, size), principal.name
        )
        entries = found.items
        token = ""
        if found.more and entries:
            token = self._pages.issue({"s": entries[-1].sequence}, binding)
        return AuditPage(entries, token, found.total)

    async def verify(self, principal: Principal) -> Verification:
        principal.require(Permission.AUDIT_READ)
        return await self._store.report(self._verify, principal.name)

    def _verify(self, repo: AuditRepository) -> Verification:
        base = repo.audit_base()
        first = 1 if base is None else base.sequence + 1
        if base is not None and base.problem:
            return Verification(False, 0, first, base.problem, b"", first)
        checked, broken, problem = self._chain.verify(repo.iter_audit(), base)
        head = repo.audit_head()
        last_hash = b""
        if not broken and head is not None and head.problem:
            broken, problem = head.sequence or 1, head.problem
        elif not broken and head is not None:
            newest = repo.list_audit(AuditQuery(descending=True), None, 1).items
            last = newest[0] if newest else None
            if last is None or last.sequence != head.sequence or last.hash.hex() != head.hash_hex:
                broken = head.sequence
                problem = (
                    f"the log ends before entry {head.sequence}, the last one written: "
                    "entries were removed from its end"
                )
            else:
                last_hash = last.hash
        return Verification(not broken, checked, broken, problem, last_hash, first)


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
