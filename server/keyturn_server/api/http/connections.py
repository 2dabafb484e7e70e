"""The HTTP listener's share of connections (connection_budget.py), and how long a
connection may stay without a request in progress.

aiohttp closes a connection that has waited ``keepalive_timeout`` for its next request,
counted from the connection's start or its last answer, and a request whose headers are
still arriving is no request yet: so the same timeout bounds idle keep-alive connections
and slowly sent headers (a slowloris) alike. Its default in the low-level server is an
hour; Keyturn sets ``--http-idle-timeout``. Past the listener's share, new connections
are closed at once, before aiohttp reads a byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from keyturn_server.api.http.protocol import Protocol

log = logging.getLogger("keyturn.http")
#: At most one "connections refused" line per this many seconds.
REPORT_EVERY = 10.0


class CappedServer(web.Server):
    """aiohttp's low-level server, holding at most ``cap`` connections at once, each
    served by :class:`Protocol` (malformed requests answered without their bytes)."""

    def __init__(self, handler: Any, *, cap: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.cap = cap
        self.refused = 0
        self._reported = 0.0

    def __call__(self) -> RequestHandler:
        return Protocol(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self._connections) >= self.cap:
            self.refused += 1
            transport.abort()  # never registered: connection_lost ignores it
            now = time.monotonic()
            if now - self._reported >= REPORT_EVERY:
                self._reported = now
                log.warning(
                    "HTTP listener full (%d connections, --max-connections): refusing new "
                    "ones (%d so far)",
                    self.cap,
                    self.refused,
                    extra={"category": "security", "refused": self.refused},
                )
            return
        super().connection_made(handler, transport)
