"""The audit log in SQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime

from keyturn_server.clock import to_micros
from keyturn_server.domain.audit import GENESIS, AuditDraft, AuditEntry, AuditHead, AuditQuery
from keyturn_server.domain.paging import Listing
from keyturn_server.store import rows
from keyturn_server.store.sql.meta import MetaSql
from keyturn_server.store.sql.statements import Where

#: The anchor: the last entry written (sequence and hash) with a MAC under a key derived
#: from the keyring, kept apart from the log itself. Entries removed from the end, or the
#: whole log, no longer match it, and a writer without MASTER_KEY cannot make another.
HEAD = "audit_head"


def _anchored(sequence: int, digest_hex: str) -> bytes:
    return f"keyturn/v1|audit-anchor|{sequence}|{digest_hex}".encode()


class AuditSql(MetaSql):
    def append_audit(
        self, draft: AuditDraft, time: datetime, link: Callable[[bytes, int], bytes]
    ) -> AuditEntry:
        self._serialise_append()
        head = self._one("SELECT sequence, hash FROM audit ORDER BY sequence DESC LIMIT 1")
        sequence = 1 if head is None else head["sequence"] + 1
        previous = GENESIS if head is None else bytes(head["hash"])
        digest = link(previous, sequence)
        self._run(
            "INSERT INTO audit (sequence, time, action, principal, role, user_id, resource_type, "
            "resource_id, reason, peer, outcome, details, hash, previous_hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sequence,
                to_micros(time),
                draft.action,
                draft.principal,
                draft.role,
                draft.user_id,
                draft.resource_type,
                draft.resource_id,
                draft.reason,
                draft.peer,
                draft.outcome,
                json.dumps(draft.details, sort_keys=True),
                digest,
                previous,
            ),
        )
        mac = self._integrity.protection.anchor.tag(_anchored(sequence, digest.hex()))
        self.set_meta(HEAD, f"{sequence}:{digest.hex()}:{mac.hex()}".encode())
        return AuditEntry(sequence, time, draft, digest, previous)

    def audit_head(self) -> AuditHead | None:
        raw = self.get_meta(HEAD)
        if raw is None:
            # The keyring's creation is audited with it, so the log is never empty.
            return AuditHead(0, "", "the log's anchor is missing: the log was deleted")
        sequence, _, rest = raw.decode(errors="replace").partition(":")
        digest, _, mac = rest.partition(":")
        try:
            number, tag = int(sequence), bytes.fromhex(mac)
        except ValueError:
            number, tag = 0, b""
        if not tag or not self._integrity.protection.anchor.verify(_anchored(number, digest), tag):
            self._integrity.report("meta", HEAD, "", "wrong" if tag else "missing")
            return AuditHead(
                number, digest, "the log's anchor failed authentication: it was rewritten"
            )
        return AuditHead(number, digest)

    def list_audit(self, query: AuditQuery, after: int | None, limit: int) -> Listing[AuditEntry]:
        where = Where()
        if query.action:
            where.add("action = ?", query.action)
        if query.principal:
            where.add("principal = ?", query.principal)
        if query.resource_id:
            where.add("resource_id = ?", query.resource_id)
        if query.start is not None:
            where.add("time >= ?", to_micros(query.start))
        if query.end is not None:
            where.add("time < ?", to_micros(query.end))
        total = self._one(f"SELECT COUNT(*) AS n FROM audit{where.sql()}", where.params)["n"]
        if after is not None:
            where.add("sequence < ?" if query.descending else "sequence > ?", after)
        order = "DESC" if query.descending else "ASC"
        found = self._all(
            f"SELECT * FROM audit{where.sql()} ORDER BY sequence {order} LIMIT ?",
            [*where.params, limit + 1],
        )
        return Listing([rows.audit_from_row(r) for r in found[:limit]], total, len(found) > limit)

    def iter_audit(self, batch: int = 1000) -> Iterator[AuditEntry]:
        after = 0
        while True:
            found = self._all(
                "SELECT * FROM audit WHERE sequence > ? ORDER BY sequence LIMIT ?", (after, batch)
            )
            if not found:
                return
            for r in found:
                yield rows.audit_from_row(r)
            after = found[-1]["sequence"]
