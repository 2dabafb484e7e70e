"""Who runs the scheduler: a Leadership hands this replica the lease (domain/lease.py)
when it may act on deadlines, takes it back when it may not, and says when that changed.

The embedded store has one process, so it leads alone (:class:`SoleLeader`); the
PostgreSQL store elects one replica among many (store/postgres/leadership.py). Either way
the scheduler's writes are fenced by the lease's epoch, so a replica that lost the lease
without noticing cannot act.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from keyturn_server.clock import Clock
from keyturn_server.domain.lease import Lease
from keyturn_server.domain.repositories import Repository, Store

log = logging.getLogger("keyturn.scheduler")


class Leadership(Protocol):
    holder: str

    def lease(self) -> Lease | None:
        """The lease this replica holds now; None while another one leads (or nobody)."""
        ...

    def lost(self, lease: Lease) -> None:
        """A fenced write found ``lease`` superseded: stop believing in it."""
        ...

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) whenever the lease is gained or lost."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SoleLeader:
    """The only process on its store: it takes the lease at start and keeps it, unless
    another process takes it over (then it stops acting, and says so)."""

    def __init__(self, store: Store, clock: Clock, holder: str) -> None:
        self._store = store
        self._clock = clock
        self.holder = holder
        self._lease: Lease | None = None
        self._callbacks: list[Callable[[], None]] = []

    def lease(self) -> Lease | None:
        return self._lease

    def lost(self, lease: Lease) -> None:
        if self._lease == lease:
            self._lease = None
            log.warning(
                "another process took over the scheduler lease; this one stopped scheduling",
                extra={"category": "error", "epoch": lease.epoch},
            )
            for callback in self._callbacks:
                callback()

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    async def start(self) -> None:
        def take(repo: Repository) -> Lease:
            return repo.take_scheduler_lease(self.holder, self._clock.now())

        self._lease = await self._store.write(take)
        for callback in self._callbacks:
            callback()

    async def stop(self) -> None:
        self._lease = None
