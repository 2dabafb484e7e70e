"""Key and handle status in SQL: one table per record, read by both the List filters and
the counts of statistics, health and metrics.

A status is not stored: it depends on the clock (EXPIRING, EXPIRED). Each entry is the
condition under which a row has that status, written so that the conditions are
disjoint and cover every stored state; the filter of a status is its condition, and the
counts' CASE tries them in turn. The Python definitions (``Key.status``,
``Handle.status``) must agree with these: tests/test_status.py checks that they do at
the boundary instants, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from keyturn_server.domain.handles import HandleStatus
from keyturn_server.domain.keys import KeyStatus

KEY_STATUS: dict[KeyStatus, str] = {
    KeyStatus.ACTIVE: "state = 'ACTIVE' AND expire_time > :now "
    "AND (warn_time IS NULL OR warn_time > :now)",
    KeyStatus.EXPIRING: "state = 'ACTIVE' AND expire_time > :now AND warn_time <= :now",
    KeyStatus.EXPIRED: "(state = 'EXPIRED' OR (state = 'ACTIVE' AND expire_time <= :now))",
    KeyStatus.REMOVED: "state = 'REMOVED' AND (destroy_time IS NULL OR destroy_time > :now)",
    KeyStatus.DESTROYED: "(state = 'DESTROYED' OR (state = 'REMOVED' AND destroy_time <= :now))",
}

HANDLE_STATUS: dict[HandleStatus, str] = {
    HandleStatus.ACTIVE: "state = 'ACTIVE' AND expire_time > :now AND warn_time > :now",
    HandleStatus.EXPIRING: "state = 'ACTIVE' AND expire_time > :now AND warn_time <= :now",
    HandleStatus.EXPIRED: "(state = 'EXPIRED' OR "
    "(state IN ('ACTIVE', 'EXHAUSTED') AND expire_time <= :now))",
    HandleStatus.EXHAUSTED: "state = 'EXHAUSTED' AND expire_time > :now",
    HandleStatus.REVOKED: "state = 'REVOKED'",
}


def status_case(conditions: dict[KeyStatus, str] | dict[HandleStatus, str]) -> str:
    """A CASE expression naming each row's status (``:now`` still to be bound); a row in
    a state none of the conditions knows shows its stored state."""
    whens = " ".join(f"WHEN {sql} THEN '{status.value}'" for status, sql in conditions.items())
    return f"CASE {whens} ELSE state END"
