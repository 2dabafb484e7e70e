"""The Store protocol every backend implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, TypeVar

from keyturn_server.domain.events import Event
from keyturn_server.store.sql import SqlRepository

T = TypeVar("T")

CommitListener = Callable[[list[Event]], None]


@dataclass(frozen=True)
class StoreStatus:
    backend: str
    writable: bool
    last_commit: timedelta
    pending_writes: int
    schema_version: int
    problem: str = ""


class Store(Protocol):
    backend: str

    def read(self) -> SqlRepository:
        """A repository for reads on the calling (event loop) thread."""

    async def write(self, work: Callable[[SqlRepository], T]) -> T:
        """Run ``work`` in one transaction and return its result once it is durable.

        ``work`` is plain synchronous code (the domain's rules); if it raises, nothing it
        did is kept. Events it appended reach the commit listeners after the commit and
        before this returns.
        """

    async def report(self, work: Callable[[SqlRepository], T]) -> T:
        """Run a read that may scan (counts, statistics, listings with totals) on its own
        connection in a worker thread, so that it never blocks the event loop."""

    def add_commit_listener(self, listener: CommitListener) -> None: ...

    def status(self) -> StoreStatus: ...

    async def close(self) -> None: ...
