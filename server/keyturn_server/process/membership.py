"""A worker's ties to its siblings: which one schedules, and wake-ups after commits.

On SQLite the workers share one database file: the scheduler lock (:mod:`leader`) picks
the one worker that takes the scheduler's lease, and the peers' sockets (:mod:`peers`)
bring each worker the events and configuration revisions the others commit. On
PostgreSQL each worker is a replica like any other: the store's own leadership elects one
and LISTEN/NOTIFY fans out, so there is nothing to add.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from keyturn_server.clock import Clock
from keyturn_server.process.leader import WorkerLeadership
from keyturn_server.process.peers import CONFIG, EVENTS, Peers
from keyturn_server.process.worker import WorkerRole
from keyturn_server.store.sqlite import SqliteStore

log = logging.getLogger("keyturn.app")


class Membership:
    def __init__(self, role: WorkerRole, data_dir: Path) -> None:
        self.role = role
        self._data_dir = data_dir
        self._peers = Peers(role.peers, role.index, role.count)
        self._sqlite: SqliteStore | None = None

    def leadership(self, store: SqliteStore, clock: Clock, holder: str) -> WorkerLeadership:
        """Who schedules among the workers sharing ``store``."""
        return WorkerLeadership(store, clock, holder, self._data_dir, self.role.index)

    def start(self, store: SqliteStore, config_refresh: Callable[[], None]) -> None:
        """Join the siblings on a shared SQLite store (call once the loop runs)."""
        self._sqlite = store
        store.announce = lambda: self._peers.notify(EVENTS)
        self._peers.start(on_events=store.catch_up, on_config=config_refresh)
        # Anything committed before the socket was bound was announced to nobody.
        store.catch_up()

    def config_changed(self) -> None:
        self._peers.notify(CONFIG)

    def check(self) -> None:
        """The safety net under the wake-ups (every refresh interval)."""
        if self._sqlite is not None and self._sqlite.changed():
            self._sqlite.catch_up()

    def orphaned(self) -> bool:
        """The supervisor is gone (this worker was re-parented): time to stop."""
        return os.getppid() != self.role.supervisor

    def stop(self) -> None:
        """Leave (this worker's sockets are gone by then: figures first, then here)."""
        self._peers.close()
        if self.orphaned():
            # A supervisor killed (SIGKILL) could not remove its private directory: the
            # last of its workers to stop does. Any other worker's socket still in it
            # makes this fail, and that worker tries in turn.
            with contextlib.suppress(OSError):
                self.role.peers.rmdir()
