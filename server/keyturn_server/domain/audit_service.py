"""Reading and verifying the audit log (auditors, operators and admins)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from keyturn_server.domain.access import Permission, Principal
from keyturn_server.domain.audit import AuditChain, AuditEntry, AuditQuery
from keyturn_server.domain.errors import FieldViolation, InvalidArgument
from keyturn_server.domain.limits import raise_if, text
from keyturn_server.domain.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
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


class AuditService:
    def __init__(self, store: Store, chain: AuditChain) -> None:
        self._store = store
        self._chain = chain

    async def list_entries(
        self, principal: Principal, query: AuditQuery, page_size: int, page_token: str
    ) -> AuditPage:
        principal.require(Permission.AUDIT_READ)
        violations: list[FieldViolation] = []
        for name in ("action", "principal", "resource_id"):
            text(name, getattr(query, name), 128, violations)
        if page_size < 0:
            violations.append(FieldViolation("page_size", "must not be negative"))
        raise_if(violations)
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode(page_token, query)
        found = await self._store.report(lambda repo: repo.list_audit(query, after, size))
        entries = found.items
        token = _encode(entries[-1].sequence, query) if found.more and entries else ""
        return AuditPage(entries, token, found.total)

    async def verify(self, principal: Principal) -> Verification:
        principal.require(Permission.AUDIT_READ)
        return await self._store.report(self._verify)

    def _verify(self, repo: AuditRepository) -> Verification:
        checked, broken, problem = self._chain.verify(repo.iter_audit())
        head = repo.audit_head()
        last_hash = b""
        if not broken and head is not None:
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
        return Verification(not broken, checked, broken, problem, last_hash)


def _fingerprint(query: AuditQuery) -> str:
    return repr(
        (query.action, query.principal, query.resource_id, query.start, query.end, query.descending)
    )


def _encode(sequence: int, query: AuditQuery) -> str:
    raw = f"{sequence}|{_fingerprint(query)}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, query: AuditQuery) -> int | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        sequence, _, fingerprint = raw.partition("|")
        value = int(sequence)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("not a page token from this service", field="page_token") from None
    if fingerprint != _fingerprint(query):
        raise InvalidArgument("page token was issued for different filters", field="page_token")
    return value
