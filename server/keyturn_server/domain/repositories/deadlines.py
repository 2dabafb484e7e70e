"""The scheduler's queue: due deadlines by kind, found through indexes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from keyturn_server.domain.deadlines import Deadline, DeadlineKind, Overdue


class DeadlineQueue(Protocol):
    def next_deadlines(self, kinds: Iterable[DeadlineKind]) -> list[Deadline]:
        """The earliest deadline of each kind that has one."""
        ...

    def due(self, kind: DeadlineKind, now: datetime, limit: int) -> list[Overdue]:
        """The deadlines of ``kind`` at or before ``now``, earliest first, each with what
        it names: key or handle ids, a VersionRef for VERSION_EXPIRE, a SecretRef for
        SECRET_GRACE."""
        ...
