"""The HTTP/JSON listener: aiohttp's low-level server on the event loop that runs grpc.aio,
in the same process, with the same TLS settings as gRPC.

aiohttp was chosen over uvicorn (ASGI) after measuring both on a bare JSON endpoint
(h2load --h1, 16 connections, same machine): uvicorn with httptools answered about 1.25x
as many requests, but it is embedded only through private entry points (``Server.serve``
installs its own signal handlers, which would take SIGTERM from ``keyturn serve``), while
aiohttp documents running a server inside an existing loop (runners and sites), graceful
shutdown with a timeout, TLS contexts and streaming responses, with a C HTTP parser
(llhttp). Keyturn's own work, not the parser, is most of the cost of a call.

Routes: ``/v1/...`` (the transcoded API), ``/api/key-management/...`` (the specification's
REST API) and ``/openapi.json``; anything else is a JSON 404.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from google.rpc import code_pb2

from keyturn_server.api.guard import Guard
from keyturn_server.api.http import browsers
from keyturn_server.api.http.compat.routes import CompatApi
from keyturn_server.api.http.connections import (
    CappedServer,
    ConnectionBudget,
    CountedListener,
    Site,
)
from keyturn_server.api.http.openapi import document_bytes, services
from keyturn_server.api.http.responses import json_response, no_route, status_response
from keyturn_server.api.http.transcoder import Transcoder
from keyturn_server.certificates import ServedCertificate
from keyturn_server.clock import Clock
from keyturn_server.domain.handle_lookup import HandleLookup
from keyturn_server.settings import Settings, split_address

log = logging.getLogger("keyturn.http")
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
COMPAT_PREFIX = "/api/key-management"


def http_server(
    settings: Settings,
    guard: Guard,
    servicers: Mapping[str, object],
    lookup: HandleLookup,
    clock: Clock,
    connection_cap: int,
    certificate: ServedCertificate | None = None,
) -> HttpServer:
    """The listener for ``settings.http_listen``, on the servicers the gRPC server uses;
    with ``certificate``, HTTPS serving what the gRPC listener serves."""
    # A body has as long to arrive as a connection may stay idle (transcoder._too_slow).
    body_timeout = settings.http_idle_timeout.total_seconds()
    transcoder = Transcoder(guard, servicers, services(), body_timeout)
    compat = CompatApi(guard, servicers, lookup, clock, body_timeout)
    return HttpServer(settings, transcoder.handle, compat.handle, connection_cap, certificate)


class HttpServer:
    def __init__(
        self,
        settings: Settings,
        api: Handler,
        compat: Handler,
        connection_cap: int,
        certificate: ServedCertificate | None,
    ) -> None:
        self._settings = settings
        self._certificate = certificate
        #: Connections this listener may hold (connection_budget.py).
        self.connection_cap = connection_cap
        self._api = api
        self._compat = compat
        self._runner: web.ServerRunner | None = None
        self._openapi = document_bytes()
        self.ports: list[int] = []
        #: The connections the listener holds (counted as they are accepted).
        self.budget = ConnectionBudget(connection_cap)
        self.addresses: list[str] = []

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._settings.insecure_no_auth:
            refused = browsers.refusal(request)
            if refused is not None:
                return refused
        path = request.rel_url.raw_path
        if path.startswith("/v1/"):
            return await self._api(request)
        if path == COMPAT_PREFIX or path.startswith(COMPAT_PREFIX + "/"):
            return await self._compat(request)
        if path == "/openapi.json" and request.method in ("GET", "HEAD"):
            return json_response(self._openapi)
        return status_response(code_pb2.NOT_FOUND, no_route(request.method))

    async def start(self, grace_seconds: float) -> None:
        server = CappedServer(
            self._dispatch,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=self._settings.http_idle_timeout.total_seconds(),
        )
        runner = self._runner = web.ServerRunner(
            server, shutdown_timeout=grace_seconds, access_log=None
        )
        await runner.setup()
        context = self._tls()
        budget = self.budget = ConnectionBudget(self.connection_cap)  # all addresses together
        for address in self._settings.http_listen:
            try:
                sock = _bind(address, self._settings.reuse_port)
            except OSError as exc:
                if not self._settings.http_listen_is_default:
                    raise OSError(f"--http-listen {address}: {exc.strerror or exc}") from exc
                log.warning(
                    "HTTP/JSON is off: the default address %s is in use; "
                    "pass --http-listen HOST:PORT (or off)",
                    address,
                    extra={"category": "app"},
                )
                continue
            listener = CountedListener(sock, budget)
            site = Site(runner, listener, ssl_context=context)
            await site.start()
            host, _ = split_address(address)
            port = listener.getsockname()[1]
            self.ports.append(port)
            scheme = "https" if context else "http"
            shown = f"[{host}]" if ":" in host else (host or "0.0.0.0")  # noqa: S104
            self.addresses.append(f"{scheme}://{shown}:{port}")

    def _tls(self) -> ssl.SSLContext | None:
        return self._certificate.http_context() if self._certificate is not None else None

    async def stop(self) -> None:
        """Stop listening, let running calls finish within the grace period, close."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _bind(address: str, reuse_port: bool) -> socket.socket:
    """``reuse_port`` only in a worker of ``--workers``, which shares the port on purpose."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024, reuse_port=reuse_port)
    sock.setblocking(False)
    return sock
