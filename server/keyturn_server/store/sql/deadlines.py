"""The scheduler's view in SQL: due deadlines, each kind through its partial index
(migrations/0001_initial.sql), so that finding work never scans a table."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from keyturn_server.clock import from_micros, to_micros
from keyturn_server.domain.deadlines import Deadline, DeadlineKind, Due, SecretRef, VersionRef
from keyturn_server.store.sql.statements import SqlBase

K = DeadlineKind

#: The earliest deadline of each kind.
NEXT: dict[DeadlineKind, str] = {
    K.KEY_NOTIFY: "SELECT notify_time AS t FROM keys WHERE state = 'ACTIVE' "
    "AND notify_time IS NOT NULL ORDER BY notify_time LIMIT 1",
    K.KEY_ROTATE: "SELECT next_rotation_time AS t FROM keys WHERE state = 'ACTIVE' "
    "ORDER BY next_rotation_time LIMIT 1",
    K.KEY_EXPIRE: "SELECT expire_time AS t FROM keys WHERE state = 'ACTIVE' "
    "ORDER BY expire_time LIMIT 1",
    K.VERSION_EXPIRE: "SELECT expire_time AS t FROM key_versions WHERE state = 'ENABLED' "
    "ORDER BY expire_time LIMIT 1",
    K.KEY_DESTROY: "SELECT destroy_time AS t FROM keys WHERE state = 'REMOVED' "
    "ORDER BY destroy_time LIMIT 1",
    K.HANDLE_NOTIFY: "SELECT notify_time AS t FROM handles WHERE state = 'ACTIVE' "
    "AND notify_time IS NOT NULL ORDER BY notify_time LIMIT 1",
    K.HANDLE_ROTATE: "SELECT rotate_time AS t FROM handles WHERE state = 'ACTIVE' "
    "ORDER BY rotate_time LIMIT 1",
    K.HANDLE_EXPIRE: "SELECT expire_time AS t FROM handles "
    "WHERE state IN ('ACTIVE', 'EXHAUSTED') ORDER BY expire_time LIMIT 1",
    K.SECRET_GRACE: "SELECT grace_until AS t FROM handle_secrets "
    "WHERE sealed_token IS NOT NULL ORDER BY grace_until LIMIT 1",
}

#: What is due at a time (the first parameter), at most a number (the second) of them.
DUE: dict[DeadlineKind, str] = {
    K.KEY_NOTIFY: "SELECT id FROM keys WHERE state = 'ACTIVE' AND notify_time IS NOT NULL "
    "AND notify_time <= ? ORDER BY notify_time LIMIT ?",
    K.KEY_ROTATE: "SELECT id FROM keys WHERE state = 'ACTIVE' "
    "AND next_rotation_time <= ? ORDER BY next_rotation_time LIMIT ?",
    K.KEY_EXPIRE: "SELECT id FROM keys WHERE state = 'ACTIVE' "
    "AND expire_time <= ? ORDER BY expire_time LIMIT ?",
    K.VERSION_EXPIRE: "SELECT key_id AS id, version AS number FROM key_versions "
    "WHERE state = 'ENABLED' AND expire_time <= ? ORDER BY expire_time LIMIT ?",
    K.KEY_DESTROY: "SELECT id FROM keys WHERE state = 'REMOVED' "
    "AND destroy_time <= ? ORDER BY destroy_time LIMIT ?",
    K.HANDLE_NOTIFY: "SELECT id FROM handles WHERE state = 'ACTIVE' "
    "AND notify_time IS NOT NULL AND notify_time <= ? ORDER BY notify_time LIMIT ?",
    K.HANDLE_ROTATE: "SELECT id FROM handles WHERE state = 'ACTIVE' "
    "AND rotate_time <= ? ORDER BY rotate_time LIMIT ?",
    K.HANDLE_EXPIRE: "SELECT id FROM handles WHERE state IN ('ACTIVE', 'EXHAUSTED') "
    "AND expire_time <= ? ORDER BY expire_time LIMIT ?",
    K.SECRET_GRACE: "SELECT handle_id AS id, generation AS number FROM handle_secrets "
    "WHERE sealed_token IS NOT NULL AND grace_until <= ? ORDER BY grace_until LIMIT ?",
}


class DeadlineSql(SqlBase):
    def next_deadlines(self, kinds: Iterable[DeadlineKind]) -> list[Deadline]:
        found = []
        for kind in kinds:
            row = self._one(NEXT[kind])
            if row is not None and row["t"] is not None:
                found.append(Deadline(kind, from_micros(row["t"])))
        return found

    def due(self, kind: DeadlineKind, now: datetime, limit: int) -> list[Due]:
        found = self._all(DUE[kind], (to_micros(now), limit))
        if kind is K.VERSION_EXPIRE:
            return [VersionRef(r["id"], r["number"]) for r in found]
        if kind is K.SECRET_GRACE:
            return [SecretRef(r["id"], r["number"]) for r in found]
        return [r["id"] for r in found]
