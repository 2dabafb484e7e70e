"""Which worker runs the scheduler: the one holding ``DATA_DIR/scheduler.lock``.

Every worker waits for an exclusive ``flock`` on the file in a thread of its own; the
kernel grants it to one at a time and takes it back only when the holder's process ends
(or it lets go on a graceful stop), so the next worker takes over the moment the holder
is gone. The holder then takes the store's scheduler lease (domain/lease.py), whose epoch
fences every scheduled write as for replicas: a worker that somehow lost the lease stops
acting even while it holds the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from keyturn_server.clock import Clock
from keyturn_server.domain.lease import Lease
from keyturn_server.domain.repositories import Repository, Store

log = logging.getLogger("keyturn.scheduler")
LOCK_FILE = "scheduler.lock"


class WorkerLeadership:
    """A Leadership (domain/leadership.py) among the workers of one supervisor."""

    def __init__(
        self, store: Store, clock: Clock, holder: str, data_dir: Path, worker: int
    ) -> None:
        self._store = store
        self._clock = clock
        self.holder = holder
        self.path = data_dir / LOCK_FILE
        self.worker = worker
        self._lease: Lease | None = None
        self._callbacks: list[Callable[[], None]] = []
        #: Guards the file descriptor between the waiting thread and stop().
        self._guard = threading.Lock()
        self._fd: int | None = None
        self._taking: asyncio.Task[None] | None = None

    def lease(self) -> Lease | None:
        return self._lease

    def lost(self, lease: Lease) -> None:
        if self._lease == lease:
            self._lease = None
            log.warning(
                "the scheduler lease was taken over; this worker stopped scheduling",
                extra={"category": "error", "epoch": lease.epoch, "worker": self.worker},
            )
            self._changed()

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self) -> None:
        for callback in self._callbacks:
            callback()

    async def start(self) -> None:
        """Begin waiting for the lock; the lease is taken once it is held."""
        loop = asyncio.get_running_loop()
        fd = self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder is gone
            except OSError:
                return
            with self._guard:
                if self._fd != fd:  # stopped meanwhile: the number may be reused now
                    return
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            with contextlib.suppress(RuntimeError):  # the loop closed: stopping
                loop.call_soon_threadsafe(self._gained)

        threading.Thread(target=wait, name="keyturn-scheduler-lock", daemon=True).start()

    def _gained(self) -> None:
        self._taking = asyncio.ensure_future(self._take())

    async def _take(self) -> None:
        def take(repo: Repository) -> Lease:
            return repo.take_scheduler_lease(self.holder, self._clock.now())

        try:
            self._lease = await self._store.write(take)
        except Exception:
            log.exception("taking the scheduler lease failed", extra={"category": "error"})
            return
        log.info(
            "this worker runs the scheduler",
            extra={
                "category": "app",
                "worker": self.worker,
                "pid": os.getpid(),
                "epoch": self._lease.epoch,
            },
        )
        self._changed()

    async def stop(self) -> None:
        """Let another worker lead (graceful stop); the process's end does it anyway."""
        if self._taking is not None:
            self._taking.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._taking
        self._lease = None
        with self._guard:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
