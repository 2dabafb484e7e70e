"""The audit log in SQL."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import datetime

from keyturn_server.clock import from_micros, to_micros
from keyturn_server.domain.audit import (
    GENESIS,
    AuditBase,
    AuditDraft,
    AuditEntry,
    AuditHead,
    AuditPruned,
    AuditQuery,
)
from keyturn_server.domain.paging import Listing
from keyturn_server.store import rows
from keyturn_server.store.sql.meta import MetaSql
from keyturn_server.store.sql.statements import Where

#: The anchor: the last entry written (sequence and hash) with a MAC under a key derived
#: from the keyring, kept apart from the log itself. Entries removed from the end, or the
#: whole log, no longer match it, and a writer without MASTER_KEY cannot make another.
HEAD = "audit_head"
#: The base: the newest entry pruned under the retention (sequence and hash), MAC'd the
#: same way. The kept log links to it; entries removed from the start without it, or
#: beyond it, break the chain.
BASE = "audit_base"


#: What each mark's MAC is over, so that one cannot stand in for the other.
_LABELS = {HEAD: "audit-anchor", BASE: "audit-base"}


def _marked(name: str, sequence: int, digest_hex: str) -> bytes:
    return f"keyturn/v1|{_LABELS[name]}|{sequence}|{digest_hex}".encode()


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
        self._set_mark(HEAD, sequence, digest)
        return AuditEntry(sequence, time, draft, digest, previous)

    def _set_mark(self, name: str, sequence: int, digest: bytes) -> None:
        mac = self._integrity.protection.anchor.tag(_marked(name, sequence, digest.hex()))
        self.set_meta(name, f"{sequence}:{digest.hex()}:{mac.hex()}".encode())

    def _mark(self, name: str) -> tuple[int, str, bool] | None:
        """(sequence, hash in hex, whether its MAC holds) of a mark beside the log; None
        when there is none. A MAC that fails is reported."""
        raw = self.get_meta(name)
        if raw is None:
            return None
        sequence, _, rest = raw.decode(errors="replace").partition(":")
        digest, _, mac = rest.partition(":")
        try:
            number, tag = int(sequence), bytes.fromhex(mac)
        except ValueError:
            number, tag = 0, b""
        if tag and self._integrity.protection.anchor.verify(_marked(name, number, digest), tag):
            return number, digest, True
        self._integrity.report("meta", name, "", "wrong" if tag else "missing")
        return number, digest, False

    def audit_head(self) -> AuditHead | None:
        mark = self._mark(HEAD)
        if mark is None:
            # The keyring's creation is audited with it, so the log is never empty.
            return AuditHead(0, "", "the log's anchor is missing: the log was deleted")
        number, digest, authentic = mark
        if not authentic:
            return AuditHead(
                number, digest, "the log's anchor failed authentication: it was rewritten"
            )
        return AuditHead(number, digest)

    def audit_base(self) -> AuditBase | None:
        mark = self._mark(BASE)
        if mark is None:
            return None
        number, digest, authentic = mark
        if not authentic:
            return AuditBase(
                number, b"", "the record of the log's pruned start failed authentication"
            )
        return AuditBase(number, bytes.fromhex(digest))

    def oldest_prunable_audit(self) -> datetime | None:
        row = self._one(
            "SELECT time FROM audit WHERE sequence < (SELECT MAX(sequence) FROM audit) "
            "ORDER BY sequence LIMIT 1"
        )
        return None if row is None else from_micros(row["time"])

    def prune_audit(self, before: datetime, limit: int) -> AuditPruned | None:
        # The oldest entries in sequence order, up to the first one younger than the
        # retention (one exactly as old is due, so it goes: else it would stay due), so
        # that the log kept stays one unbroken chain. The newest entry is never pruned:
        # the anchor always names an entry that is there.
        found = self._all(
            "SELECT sequence, time, hash FROM audit "
            "WHERE sequence < (SELECT MAX(sequence) FROM audit) ORDER BY sequence LIMIT ?",
            (limit,),
        )
        cutoff = to_micros(before)
        old = list(itertools.takewhile(lambda r: r["time"] <= cutoff, found))
        if not old:
            return None
        first, last = old[0]["sequence"], old[-1]["sequence"]
        digest = bytes(old[-1]["hash"])
        self._run("DELETE FROM audit WHERE sequence <= ?", (last,))
        self._set_mark(BASE, last, digest)
        return AuditPruned(first, last, digest, before)

    def list_audit(
        self, query: AuditQuery, after: int | None, limit: int, total: int | None = None
    ) -> Listing[AuditEntry]:
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
        if total is None:
            total = self._count("audit", where)
        if after is not None:
            where.add("sequence < ?" if query.descending else "sequence > ?", after)
        order = "DESC" if query.descending else "ASC"
        found = self._all(
            f"SELECT * FROM audit{where.sql()} ORDER BY sequence {order} LIMIT ?",
            [*where.params, limit + 1],
        )
        return Listing([rows.audit_from_row(r) for r in found[:limit]], total, len(found) > limit)

    def iter_audit(self, after: int = 0, limit: int | None = None) -> Iterator[AuditEntry]:
        """The entries after sequence ``after``, in order, at most ``limit``."""
        left = limit
        while left is None or left > 0:
            batch = 1000 if left is None else min(left, 1000)
            found = self._all(
                "SELECT * FROM audit WHERE sequence > ? ORDER BY sequence LIMIT ?", (after, batch)
            )
            for r in found:
                yield rows.audit_from_row(r)
            if len(found) < batch:
                return
            after = found[-1]["sequence"]
            if left is not None:
                left -= len(found)
