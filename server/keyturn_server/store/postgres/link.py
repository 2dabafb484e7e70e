"""The link to PostgreSQL: one connection that LISTENs for other replicas' events and so
always waits on the server, which makes it the first to notice when the database goes
away (a restart, a failover, a killed session) and when it is back.

While it is down the store refuses work at once (UNAVAILABLE) and health says NOT_SERVING;
it reconnects with bounded backoff (0.1 s growing to 2 s), and on the way back the store
refreshes its other connections and publishes the events it missed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from keyturn_server.store.postgres.connections import Backoff, connect, describe

log = logging.getLogger("keyturn.store")
#: How often the link looks up from waiting for notifications (to stop, or to verify).
TICK = 0.2


class Link:
    def __init__(
        self,
        url: str,
        channel: str,
        *,
        notified: Callable[[], None],
        refresh: Callable[[], None],
        up: Callable[[], None],
        down: Callable[[], None],
    ) -> None:
        self._url = url
        self._channel = channel
        self._notified = notified
        self._refresh = refresh
        self._up = up
        self._down = down
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        #: Why the database cannot be reached, or "" while it can.
        self.problem = ""
        self._since = 0.0

    @property
    def reachable(self) -> bool:
        return not self.problem

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="keyturn-pg-link", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        backoff = Backoff()
        was_up = False
        while not self._closing.is_set():
            try:
                with connect(self._url, "link") as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    was_up = True
                    backoff.reset()
                    self._reached()
                    while not self._closing.is_set():
                        for _ in conn.notifies(timeout=TICK, stop_after=1):
                            self._notified()
            except psycopg.Error as exc:
                if self._closing.is_set():
                    return
                if was_up:  # only this session may have died: try again before saying so
                    was_up = False
                    continue
                self._lost(describe(exc))
                self._closing.wait(backoff.delay())

    def _reached(self) -> None:
        # The other connections are refreshed while work is still refused, so that none
        # of it meets a connection the outage broke.
        self._refresh()
        if self.problem:
            log.warning(
                "PostgreSQL is reachable again",
                extra={
                    "category": "error",
                    "down_seconds": round(time.monotonic() - self._since, 1),
                },
            )
            self.problem = ""
        self._up()  # also on the first connect: catch up with what was missed meanwhile

    def _lost(self, why: str) -> None:
        if self.problem:
            return
        self._since = time.monotonic()
        self.problem = f"PostgreSQL is unreachable ({why}); retry"
        log.warning(
            "PostgreSQL is unreachable; calls fail with UNAVAILABLE until it is back",
            extra={"category": "error", "problem": why},
        )
        self._down()
