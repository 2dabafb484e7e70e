"""Which worker runs the scheduler: the one holding ``DATA_DIR/scheduler.lock``.

Every worker waits for an exclusive ``flock`` on the file in a thread of its own; the
kernel grants it to one at a time and takes it back only when the holder's process ends
(or it releases it on a graceful stop), so there is never more than one scheduler and the
next worker takes over the moment the holder is gone. Nothing can take the lock from a
live holder, so no fencing is needed beyond the store's write lock.
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

log = logging.getLogger("keyturn.scheduler")
LOCK_FILE = "scheduler.lock"


class SchedulerLock:
    def __init__(self, data_dir: Path, worker: int) -> None:
        self.path = data_dir / LOCK_FILE
        self.worker = worker
        self._held = threading.Event()
        #: Guards the file descriptor between the waiting thread and release().
        self._guard = threading.Lock()
        self._fd: int | None = None
        self._thread: threading.Thread | None = None

    def is_leader(self) -> bool:
        return self._held.is_set()

    def start(self, gained: Callable[[], None]) -> None:
        """Begin waiting for the lock; ``gained`` runs on the loop once it is held."""
        loop = asyncio.get_running_loop()
        fd = self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder is gone
            except OSError:
                return
            with self._guard:
                if self._fd != fd:  # released meanwhile: the number may be reused now
                    return
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._held.set()
            with contextlib.suppress(RuntimeError):  # the loop closed: stopping
                loop.call_soon_threadsafe(self._announce, gained)

        self._thread = threading.Thread(target=wait, name="keyturn-scheduler-lock", daemon=True)
        self._thread.start()

    def _announce(self, gained: Callable[[], None]) -> None:
        log.info(
            "this worker runs the scheduler",
            extra={"category": "app", "worker": self.worker, "pid": os.getpid()},
        )
        gained()

    def release(self) -> None:
        """Let another worker lead (graceful stop); the process's end does it anyway."""
        with self._guard:
            self._held.clear()
            if self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
