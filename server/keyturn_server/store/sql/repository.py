"""All SQL of the service, shared by the SQLite and PostgreSQL backends: one repository
class composed of a part per aggregate (keys, handles, events, audit, access tokens,
deadlines, named values, the scheduler's lease), implementing the domain's repository protocols.

A :class:`SqlRepository` wraps one connection: the stores hand one to each write
transaction (the domain's unit of work) and keep one for reads.
"""

from __future__ import annotations

from collections.abc import Callable

from keyturn_server.domain.events import Event
from keyturn_server.store.integrity import RowIntegrity
from keyturn_server.store.sql.audit import AuditSql
from keyturn_server.store.sql.deadlines import DeadlineSql
from keyturn_server.store.sql.events import EventSql
from keyturn_server.store.sql.handles import HandleSql
from keyturn_server.store.sql.keys import KeySql
from keyturn_server.store.sql.lease import LeaseSql
from keyturn_server.store.sql.protect import ProtectSql
from keyturn_server.store.sql.statements import Connection
from keyturn_server.store.sql.tokens import TokenSql


class SqlRepository(
    KeySql, HandleSql, EventSql, AuditSql, TokenSql, DeadlineSql, LeaseSql, ProtectSql
):
    """Reads and writes on one connection. Inside a write transaction it also collects
    the events appended and the callbacks to run once the transaction commits."""

    def __init__(
        self,
        conn: Connection,
        *,
        integrity: RowIntegrity | None = None,
        concurrent_writers: bool = False,
        lock_appends: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            conn,
            integrity=integrity,
            concurrent_writers=concurrent_writers,
            lock_appends=lock_appends,
        )
        self.events: list[Event] = []
        self.after_commit_callbacks: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.after_commit_callbacks.append(callback)
