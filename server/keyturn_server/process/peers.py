"""Wake-ups among the workers of one supervisor: a datagram to every other worker.

Each worker serves its own WatchExpiring streams from the events it publishes, so an
event committed by another worker must reach it: after a commit that made events, the
committing worker sends one byte to every peer's Unix datagram socket, and each peer then
reads the event log after the last sequence it published (the same catch-up that
PostgreSQL replicas do on NOTIFY), in order, so no event is lost, repeated or reordered.
A configuration change is announced the same way, so no worker serves a stale
configuration for the refresh interval. Measured latency from one worker's commit to
another's subscribers is in bench/README.md.

Nothing depends on a datagram arriving: a peer with a full socket buffer already has
wake-ups pending, and every worker also compares ``PRAGMA data_version`` every refresh
interval as a safety net. The sockets live in a directory only the supervisor's user can
enter (mkdtemp, 0700).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("keyturn.app")

EVENTS = b"e"
CONFIG = b"c"


class Peers:
    def __init__(self, directory: Path, index: int, count: int) -> None:
        self._directory = directory
        self.index = index
        self._others = [self._path(i) for i in range(count) if i != index]
        self._inbox: socket.socket | None = None
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.setblocking(False)
        self._pending: set[bytes] = set()
        self._handlers: dict[bytes, Callable[[], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _path(self, index: int) -> str:
        return str(self._directory / f"worker-{index}.sock")

    def start(self, on_events: Callable[[], None], on_config: Callable[[], None]) -> None:
        self._handlers = {EVENTS: on_events, CONFIG: on_config}
        path = self._path(self.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's previous life
        inbox = self._inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.bind(path)
        inbox.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(inbox.fileno(), self._receive)

    def notify(self, what: bytes) -> None:
        """Tell every other worker that ``what`` (EVENTS, CONFIG) changed."""
        for path in self._others:
            # A peer that is not there (restarting) catches up when it starts; one whose
            # buffer is full has wake-ups pending already.
            with contextlib.suppress(OSError):
                self._outbox.sendto(what, path)

    def _receive(self) -> None:
        assert self._inbox is not None and self._loop is not None
        first = not self._pending
        while True:
            try:
                self._pending.add(self._inbox.recv(16))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                log.exception("peer wake-up socket failed", extra={"category": "error"})
                break
        if first and self._pending:
            # Once per turn of the loop, however many datagrams came.
            self._loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        pending, self._pending = self._pending, set()
        for what in (CONFIG, EVENTS):
            if what in pending:
                try:
                    self._handlers[what]()
                except Exception:
                    log.exception("peer wake-up handler failed", extra={"category": "error"})

    def close(self) -> None:
        if self._inbox is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._inbox.fileno())
            self._inbox.close()
            self._inbox = None
            with contextlib.suppress(OSError):
                os.unlink(self._path(self.index))
        self._outbox.close()
