"""The HTTP listener's share of connections (connection_budget.py), and how long a
connection may stay without a request in progress.

aiohttp closes a connection that has waited ``keepalive_timeout`` for its next request,
counted from the connection's start or its last answer, and a request whose headers are
still arriving is no request yet: so the same timeout bounds idle keep-alive connections
and slowly sent headers (a slowloris) alike. Its default in the low-level server is an
hour; Keyturn sets ``--http-idle-timeout``.

Past the listener's share, new connections are closed as they are accepted, before a
byte is read or a TLS handshake begins. The share used to be counted by aiohttp's server,
which hears of a TLS connection only once its handshake is done: connections that never
began one were not counted, and asyncio waits 60 s for a handshake, so 1,100 of them
from one host took every file descriptor of a server with 1,024 and its gRPC listener
answered nothing (``tests/test_connection_flood.py``). Now the listening socket counts
every connection it accepts until it is closed, and a TLS handshake has
``HANDSHAKE_TIMEOUT_S`` (10 s), as on the gRPC listener.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from keyturn_server.api.http.protocol import Protocol
from keyturn_server.connection_budget import HANDSHAKE_TIMEOUT_S

log = logging.getLogger("keyturn.http")
#: At most one "connections refused" line per this many seconds.
REPORT_EVERY = 10.0


class CappedServer(web.Server):
    """aiohttp's low-level server, each connection served by :class:`Protocol`
    (malformed requests answered without their bytes)."""

    def __call__(self) -> RequestHandler:
        return Protocol(self, loop=self._loop, **self._kwargs)


class ConnectionBudget:
    """The connections a listener (all its addresses) holds, and its cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0
        self.refused = 0
        self._reported = 0.0

    def refuse(self) -> None:
        self.refused += 1
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


class CountedListener(socket.socket):
    """A listening socket that closes what it accepts past its budget, and counts each
    connection it hands out until that connection is closed."""

    def __init__(self, sock: socket.socket, budget: ConnectionBudget) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.budget = budget

    def accept(self) -> tuple[socket.socket, Any]:
        budget = self.budget
        while True:
            fd, address = self._accept()  # type: ignore[attr-defined]  # BlockingIOError: none left
            if budget.open < budget.cap:
                break
            os.close(fd)
            budget.refuse()
        budget.open += 1
        return _Counted(budget, self.family, self.type, self.proto, fileno=fd), address


class _Counted(socket.socket):
    """An accepted connection, counted against its listener's budget until closed."""

    def __init__(self, budget: ConnectionBudget, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._budget: ConnectionBudget | None = budget

    def close(self) -> None:
        if self._budget is not None:
            self._budget.open -= 1
            self._budget = None
        super().close()


class Site(web.SockSite):
    """aiohttp's site on a given socket, with a bounded TLS handshake (asyncio's default
    is 60 s)."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server,
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if self._ssl_context else None,
        )
