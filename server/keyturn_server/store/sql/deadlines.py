"""The scheduler's view in SQL: due deadlines, each kind through its partial index
(migrations/0001_initial.sql), so that finding work never scans a table. Keys and
handles whose rows failed authentication (store/integrity.py) are left out: acting on
them fails, and a deadline that stays due would keep the scheduler spinning."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from keyturn_server.clock import from_micros, to_micros
from keyturn_server.domain.deadlines import (
    Deadline,
    DeadlineKind,
    Due,
    Overdue,
    SecretRef,
    VersionRef,
)
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
    K.VERSION_EXPIRE: "SELECT expire_time AS t FROM key_versions "
    "WHERE state IN ('ENABLED', 'DISABLED') "
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

#: What is due at a time (the first parameter), at most a number (the second) of them,
#: with the deadline's time (t).
DUE: dict[DeadlineKind, str] = {
    K.KEY_NOTIFY: "SELECT id, notify_time AS t FROM keys WHERE state = 'ACTIVE' "
    "AND notify_time IS NOT NULL AND notify_time <= ? ORDER BY notify_time LIMIT ?",
    K.KEY_ROTATE: "SELECT id, next_rotation_time AS t FROM keys WHERE state = 'ACTIVE' "
    "AND next_rotation_time <= ? ORDER BY next_rotation_time LIMIT ?",
    K.KEY_EXPIRE: "SELECT id, expire_time AS t FROM keys WHERE state = 'ACTIVE' "
    "AND expire_time <= ? ORDER BY expire_time LIMIT ?",
    K.VERSION_EXPIRE: "SELECT key_id AS id, version AS number, expire_time AS t "
    "FROM key_versions WHERE state IN ('ENABLED', 'DISABLED') AND expire_time <= ? "
    "ORDER BY expire_time LIMIT ?",
    K.KEY_DESTROY: "SELECT id, destroy_time AS t FROM keys WHERE state = 'REMOVED' "
    "AND destroy_time <= ? ORDER BY destroy_time LIMIT ?",
    K.HANDLE_NOTIFY: "SELECT id, notify_time AS t FROM handles WHERE state = 'ACTIVE' "
    "AND notify_time IS NOT NULL AND notify_time <= ? ORDER BY notify_time LIMIT ?",
    K.HANDLE_ROTATE: "SELECT id, rotate_time AS t FROM handles WHERE state = 'ACTIVE' "
    "AND rotate_time <= ? ORDER BY rotate_time LIMIT ?",
    K.HANDLE_EXPIRE: "SELECT id, expire_time AS t FROM handles "
    "WHERE state IN ('ACTIVE', 'EXHAUSTED') AND expire_time <= ? ORDER BY expire_time LIMIT ?",
    K.SECRET_GRACE: "SELECT handle_id AS id, generation AS number, grace_until AS t "
    "FROM handle_secrets WHERE sealed_token IS NOT NULL AND grace_until <= ? "
    "ORDER BY grace_until LIMIT ?",
}


#: The column naming the key or handle each kind's rows belong to.
OWNER_ID: dict[DeadlineKind, str] = {
    kind: "key_id" if kind is K.VERSION_EXPIRE else "handle_id" if kind is K.SECRET_GRACE else "id"
    for kind in DeadlineKind
}


def _excluding(sql: str, kind: DeadlineKind, excluded: list[str]) -> str:
    if not excluded:
        return sql
    marks = ", ".join("?" for _ in excluded)
    return sql.replace(" ORDER BY", f" AND {OWNER_ID[kind]} NOT IN ({marks}) ORDER BY", 1)


class DeadlineSql(SqlBase):
    def next_deadlines(self, kinds: Iterable[DeadlineKind]) -> list[Deadline]:
        excluded = self._integrity.excluded()
        found = []
        for kind in kinds:
            row = self._one(_excluding(NEXT[kind], kind, excluded), excluded)
            if row is not None and row["t"] is not None:
                found.append(Deadline(kind, from_micros(row["t"])))
        return found

    def due(self, kind: DeadlineKind, now: datetime, limit: int) -> list[Overdue]:
        excluded = self._integrity.excluded()
        found = self._all(_excluding(DUE[kind], kind, excluded), (to_micros(now), *excluded, limit))
        return [Overdue(kind, from_micros(r["t"]), _ref(kind, r)) for r in found]


def _ref(kind: DeadlineKind, row: Any) -> Due:
    if kind is K.VERSION_EXPIRE:
        return VersionRef(row["id"], row["number"])
    if kind is K.SECRET_GRACE:
        return SecretRef(row["id"], row["number"])
    return str(row["id"])
