"""Assembles the service: clock, store, keyring, domain services, scheduler and the gRPC
server with health and reflection; starts and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from keyturn_server.api.admin import AdminServicer
from keyturn_server.api.arrivals import RequestArrivals
from keyturn_server.api.auth import Authenticator
from keyturn_server.api.grpc_server import SERVICE_NAMES, bind, grpc_server, register
from keyturn_server.api.guard import Guard
from keyturn_server.api.handles import HandleServicer
from keyturn_server.api.http.server import HttpServer, http_server
from keyturn_server.api.keys import KeyServicer
from keyturn_server.api.open_streams import PeerStreams
from keyturn_server.api.ratelimit import CallerLimiter
from keyturn_server.api.watch import StreamEncoder
from keyturn_server.bootstrap import open_store, reload_keyring, unlock
from keyturn_server.certificates import ServedCertificate
from keyturn_server.client_identities import IdentityFile
from keyturn_server.clock import Clock, SystemClock
from keyturn_server.connection_budget import raise_open_files_limit
from keyturn_server.crypto import native
from keyturn_server.domain import time_floor
from keyturn_server.domain.access_token_service import AccessTokenService
from keyturn_server.domain.audit import AuditChain, AuditLog
from keyturn_server.domain.audit_retention import AuditRetention
from keyturn_server.domain.audit_service import AuditService
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.errors import Unavailable
from keyturn_server.domain.generation import MaterialMaker
from keyturn_server.domain.handle_lifecycle import HandleLifecycle
from keyturn_server.domain.handle_lookup import HandleLookup
from keyturn_server.domain.handle_service import HandleService
from keyturn_server.domain.health import HealthService, Serving
from keyturn_server.domain.journal import Journal
from keyturn_server.domain.key_lifecycle import KeyLifecycle
from keyturn_server.domain.key_material import MaterialCache
from keyturn_server.domain.key_service import KeyService
from keyturn_server.domain.leadership import Leadership
from keyturn_server.domain.lifecycle import Scheduler
from keyturn_server.domain.nonce_budget import NonceLimits
from keyturn_server.domain.paging import PageTokens
from keyturn_server.domain.repositories import Store
from keyturn_server.domain.statistics import Statistics
from keyturn_server.domain.watch import EventHub, WatchService
from keyturn_server.domain.write_shares import WriteShares
from keyturn_server.observability import logs, worker_metrics
from keyturn_server.observability.metrics import Metrics
from keyturn_server.process import figures
from keyturn_server.process.hardening import harden
from keyturn_server.process.membership import Membership
from keyturn_server.process.ports import check_free
from keyturn_server.settings import Settings, split_address
from keyturn_server.store.sqlite import SqliteStore

log = logging.getLogger("keyturn.app")

FLUSH_INTERVAL = 5.0
HEALTH_INTERVAL = 5.0
#: How often configuration and keyring changes made elsewhere (another replica, or
#: `keyturn master-key rotate`) are picked up.
REFRESH_INTERVAL = 2.0
#: Below this many open files the server says how few connections it can hold.
LOW_OPEN_FILES = 4096


def _own(stats: Statistics) -> Callable[[], Awaitable[Statistics]]:
    """A single process's statistics: its own."""

    async def current() -> Statistics:
        return stats

    return current


@dataclass
class Services:
    keys: KeyService
    handles: HandleService
    tokens: AccessTokenService
    config: ConfigService
    scheduler: Scheduler
    hub: EventHub
    stats: Statistics
    health: HealthService


class App:
    """One running Keyturn server. Tests build it with a ManualClock and a temp dir."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        step = settings.max_clock_step
        self.clock: Clock = clock or SystemClock(max_step=step.total_seconds() if step else None)
        self.ports: list[int] = []
        self.admin_token: str | None = None
        self.metrics_port: int | None = None
        self.http: HttpServer | None = None
        #: The certificate both listeners serve, read again when its files change.
        self.certificate: ServedCertificate | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self._guard: Guard | None = None
        #: Set in a worker of `keyturn serve --workers N` (process/membership.py).
        self.membership: Membership | None = None
        self._store: Store | None = None
        self._health_servicer: Any = None
        self.services: Services | None = None
        self._leadership: Leadership | None = None
        self._health_update: asyncio.Future[None] | None = None
        self._watch: WatchService | None = None
        self.metrics: Metrics | None = None
        #: A worker's figures socket (process/figures.py).
        self._figures: asyncio.AbstractServer | None = None
        self._identities: IdentityFile | None = None
        self._maker: MaterialMaker | None = None

    @property
    def address(self) -> str:
        host, _ = split_address(self.settings.listen[0])
        return f"{host or '127.0.0.1'}:{self.ports[0]}"

    @property
    def leadership(self) -> Leadership:
        """Whether this server runs the scheduler (several replicas elect one)."""
        assert self._leadership is not None
        return self._leadership

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    async def start(self) -> None:
        settings = self.settings
        if settings.worker is None or settings.worker.index == 0:  # once per server
            for warning in settings.warnings():
                log.warning(warning, extra={"category": "security"})
        native.check()
        # Certificates first: a wrong file ends the start before anything is opened.
        certificate = settings.certificate
        served = self.certificate = ServedCertificate(certificate) if certificate else None
        credentials = served.grpc_credentials() if served else None
        if not settings.reuse_port:  # a port in use: one line, before anything is created
            for address in settings.listen:
                check_free(address)
            for address in () if settings.http_listen_is_default else settings.http_listen:
                check_free(address, "--http-listen")
            if settings.metrics_listen:
                check_free(settings.metrics_listen, "--metrics-listen")
        if settings.client_identities is not None:
            self._identities = IdentityFile(settings.client_identities)
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(settings.data_dir, 0o700)
        store = self._store = open_store(settings)
        store.write_shares = WriteShares(settings.caller_max_writes)
        membership = self.membership = (
            Membership(settings.worker, settings.data_dir) if settings.worker else None
        )
        keyring, master = await unlock(
            store, settings.data_dir, settings.master_key, settings.production, self.clock
        )
        self._keyring, self._master = keyring, master
        time_floor.restore(store, self.clock)  # the host's clock may have come back behind
        keyring.reloader = lambda: reload_keyring(store, keyring, master)
        self._retired = False
        self._outdated = False
        stats = Statistics()
        store.add_tamper_listener(lambda _table: stats.count_integrity_failure())
        journal = Journal(AuditLog(AuditChain(keyring.audit_key), logs.audit_line), self.clock)
        config = ConfigService(store, journal, self.clock)
        await config.load()
        material = MaterialCache(store, keyring, stats)
        maker = self._maker = MaterialMaker(
            settings.max_key_generations, settings.max_key_generations_per_caller, harden
        )
        key_lifecycle = KeyLifecycle(material, config, journal, self.clock, maker)
        keys = KeyService(
            store,
            config,
            journal,
            material,
            key_lifecycle,
            self.clock,
            stats,
            settings.destroy_delay,
            PageTokens(keyring.page_mac),
            NonceLimits(settings.nonce_budget),
        )
        handle_lifecycle = HandleLifecycle(keyring, config, journal, self.clock)
        handles = HandleService(
            store, keyring, config, journal, handle_lifecycle, self.clock, stats
        )
        tokens = AccessTokenService(store, keyring, journal, self.clock)
        hub = EventHub()
        hub.latest_sequence = store.read().event_bounds()[1]
        replica = settings.replica_name or f"{socket.gethostname()}:{os.getpid()}"
        if membership is not None and isinstance(store, SqliteStore):
            # Workers on one file: the holder of the scheduler lock takes the lease.
            self._leadership = membership.leadership(store, self.clock, replica)
        else:
            self._leadership = store.leadership(replica, self.clock)
        scheduler = Scheduler(
            store,
            self.clock,
            config,
            key_lifecycle,
            handle_lifecycle,
            settings.event_retention,
            self._leadership,
            settings.handle_retention,
            AuditRetention(journal, settings.audit_retention),
        )
        store.add_commit_listener(hub.publish)
        store.add_commit_listener(scheduler.poke)
        self.metrics = (
            Metrics(per_resource=settings.metrics_per_resource) if settings.metrics_listen else None
        )
        if self.metrics is not None:
            store.add_commit_listener(self.metrics.on_commit)
            tampered = self.metrics.tampered
            store.add_tamper_listener(lambda table: tampered.labels(table).inc())
            if served is not None:
                self.metrics.watch_certificate(lambda: served.current.not_after.timestamp())
        watch = self._watch = WatchService(
            store,
            hub,
            self.clock,
            handle_lifecycle,
            settings.heartbeat_interval,
            settings.watch_queue_size,
            settings.max_streams_per_caller,
        )
        if membership is not None and isinstance(store, SqliteStore):
            membership.start(store, config.refresh)
            config.listeners.append(membership.config_changed)
        health_service = HealthService(
            store, scheduler, stats, self.clock.now(), settings.scheduler_max_lag
        )
        store.add_status_listener(self._health_changed)
        self.services = Services(
            keys, handles, tokens, config, scheduler, hub, stats, health_service
        )
        self.admin_token = await tokens.bootstrap_admin(settings.data_dir, replica)

        files = raise_open_files_limit()
        connection_cap = settings.max_connections or files.per_listener()
        if files.soft < LOW_OPEN_FILES:
            log.warning(
                "open files are limited to %d: each listener holds at most %d connections; "
                "raise the hard limit (LimitNOFILE=, ulimit -Hn) for more",
                files.soft,
                connection_cap,
                extra={"category": "app"},
            )
        server = self._server = grpc_server(settings, connection_cap)
        guard = self._guard = Guard(
            Authenticator(tokens, settings.insecure_no_auth, self._identities),
            CallerLimiter(
                self.clock,
                settings.caller_rate_limit,
                settings.caller_burst,
                settings.caller_max_in_flight,
            ),
            stats,
            self.metrics,
            classify=store.classify,
        )
        encoder = StreamEncoder()
        audit_service = AuditService(
            store, AuditChain(keyring.audit_key), PageTokens(keyring.page_mac), stats
        )
        if self.metrics is not None:
            verifications = self.metrics.audit_verifications
            audit_service.listeners.append(
                lambda v: verifications.labels("intact" if v.valid else "broken").inc()
            )
        siblings = (
            None
            if membership is None
            else figures.Siblings(
                membership.role.peers, membership.role.count, membership.role.index, stats
            )
        )
        statistics = _own(stats) if siblings is None else siblings.statistics
        health_service.statistics = None if siblings is None else siblings.statistics
        servicers: dict[str, object] = {
            SERVICE_NAMES["keys"]: KeyServicer(keys, watch, encoder, statistics, self.clock),
            SERVICE_NAMES["handles"]: HandleServicer(
                handles, watch, encoder, statistics, self.clock
            ),
            SERVICE_NAMES["admin"]: AdminServicer(
                health_service, config, audit_service, tokens, self.clock
            ),
        }
        self._health_servicer = register(
            server,
            guard,
            servicers,
            PeerStreams(settings.max_streams_per_caller),
            RequestArrivals(settings.max_waiting_calls_per_peer, settings.request_arrival_timeout),
        )
        for address in settings.listen:
            self.ports.append(bind(server, address, credentials))
        await server.start()
        store.start()
        if settings.http_listen:
            self.http = http_server(
                settings,
                guard,
                servicers,
                HandleLookup(store, keyring, config, self.clock, handles.presentations),
                self.clock,
                connection_cap,
                served,
            )
            await self.http.start(settings.grace_period.total_seconds())
        scheduler.start()
        await self._leadership.start()
        await self._update_health()
        self._spawn(self._every(FLUSH_INTERVAL, self._flush))
        self._spawn(self._every(HEALTH_INTERVAL, self._update_health))
        self._spawn(self._every(REFRESH_INTERVAL, self._refresh))
        self._spawn(self._every(REFRESH_INTERVAL, store.recheck_writes))
        self._spawn(self._every(guard.access.interval, self.flush_access_log))
        self._spawn(self._every(time_floor.EVERY, self.save_time_floor))
        if siblings is not None and membership is not None:
            # The supervisor merges every worker's metrics; siblings combine statistics.
            answers = siblings.answers()
            if self.metrics is not None:
                answers["metrics"] = worker_metrics.render(self.metrics.registry)
            path = figures.socket_path(membership.role.peers, membership.role.index)
            self._figures = await figures.serve(path, answers)
        if self.metrics is not None and settings.metrics_listen:
            if membership is None:
                host, port = split_address(settings.metrics_listen)
                self.metrics_port = self.metrics.serve(host or "127.0.0.1", port)
            self._spawn(self.metrics.refresh_forever(store, self.clock, scheduler, hub))
        log.info(
            "keyturn serving",
            extra={
                "category": "app",
                "listen": ",".join(
                    f"{split_address(a)[0]}:{p}"
                    for a, p in zip(settings.listen, self.ports, strict=True)
                ),
                "http": ",".join(self.http.addresses) if self.http else "",
                "store": store.backend,
                "tls": settings.tls,
                "auth": not settings.insecure_no_auth,
                "token_checks": native.implementation(),
            },
        )

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        self._tasks.append(asyncio.ensure_future(coroutine))

    def _health_changed(self) -> None:
        """The store's status changed: tell the health service now, not at the next tick."""
        if self._health_update is None or self._health_update.done():
            self._health_update = asyncio.ensure_future(self._update_health())

    async def _every(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await action()
            except Unavailable as exc:  # the store logs its own outage, once
                log.debug("periodic task skipped: %s", exc.message)
            except Exception as exc:
                if self._store is None or self._store.classify(exc) is None:
                    log.exception("periodic task failed", extra={"category": "error"})

    async def save_time_floor(self) -> None:
        """Raise the store's time floor, if this process leads (domain/time_floor.py)."""
        if self._leadership is not None:
            await time_floor.save(self.store, self.clock, self._leadership)

    async def _flush(self) -> None:
        assert self.services is not None
        await self.services.keys.flush_usage()
        await self.services.tokens.flush_usage()

    async def flush_access_log(self) -> None:
        if self._guard is not None:
            self._guard.access.flush()

    def reload(self) -> None:
        """SIGHUP: read the served certificate and --client-identities again now. Both
        are picked up by themselves within seconds; an operator's reload should not wait
        for that, nor end the process, which is SIGHUP's default."""
        if self.services is None:
            return  # still starting: what it reads is fresh
        certificate = identities = "not configured"
        if self.certificate is not None:
            before = self.certificate.current
            fresh = self.certificate.check(now=True) is not before
            certificate = "changed" if fresh else "unchanged"
        if self._identities is not None:
            identities = "changed" if self.reload_client_identities() else "unchanged"
        clock = "not held"
        if isinstance(self.clock, SystemClock) and self.clock.ahead:
            clock = f"followed {self.clock.follow_system_clock():.0f} s ahead"
        log.info(
            "SIGHUP: reloaded; certificate %s, client identities %s, system clock %s",
            certificate,
            identities,
            clock,
            extra={"category": "app", "pid": os.getpid()},
        )

    def reload_client_identities(self) -> bool:
        """Read --client-identities again if it changed (done every few seconds)."""
        return self._identities is not None and self._identities.refresh()

    async def _refresh(self) -> None:
        assert self.services is not None
        if self.certificate is not None:  # handshakes look too; this says so when idle
            self.certificate.check()
        self.reload_client_identities()
        if self.store.check_schema() and self._leadership is not None and not self._outdated:
            # A scheduler that cannot write would keep the lease from the upgraded
            # replicas: let another one take it.
            self._outdated = True
            await self._leadership.stop()
        self.services.config.refresh()
        if self.membership is not None:
            self.membership.check()
        outcome = reload_keyring(self.store, self._keyring, self._master)
        if outcome == "reloaded":
            log.info(
                "keyring reloaded",
                extra={"category": "security", "revision": self._keyring.revision},
            )
        elif outcome == "retired" and not self._retired:
            self._retired = True
            log.warning(
                "this server's master key was rotated out; it keeps serving with the keyring "
                "it holds, and must be restarted with the new MASTER_KEY: what a later "
                "rotation re-seals is refused here (MASTER_KEY_RETIRED) until then",
                extra={"category": "security"},
            )

    async def _update_health(self) -> None:
        if self.services is None or self._health_servicer is None:
            return
        verdicts = self.services.health.serving(self.clock.now())
        for part, name in (
            ("", ""),
            ("keys", SERVICE_NAMES["keys"]),
            ("handles", SERVICE_NAMES["handles"]),
            ("admin", SERVICE_NAMES["admin"]),
        ):
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if verdicts[part] is Serving.SERVING
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self._health_servicer.set(name, status)

    async def stop(self, grace: timedelta | None = None) -> None:
        """Stop taking calls, let running ones finish (streams are ended), hand the
        scheduler over, flush, close; then say so in one line."""
        started = time.monotonic()
        streams = len(self.services.hub) if self.services is not None else 0
        if self._health_servicer is not None:
            await self._health_servicer.enter_graceful_shutdown()
        if self._watch is not None:
            self._watch.close()  # streams end now with a resume point, not at the deadline
        seconds = (grace or self.settings.grace_period).total_seconds()
        stopping = []
        if self.http is not None:
            stopping.append(self.http.stop())
            self.http = None
        if self._server is not None:
            stopping.append(self._server.stop(seconds))
            self._server = None
        await asyncio.gather(*stopping)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        led = False
        flushed = "nothing to flush"
        if self.services is not None:
            await self.services.scheduler.stop()
            if self._leadership is not None:
                led = self._leadership.lease() is not None
                with contextlib.suppress(Exception):  # a store that cannot write says so
                    await self.save_time_floor()  # while it still leads
                await self._leadership.stop()  # another replica takes over at once
            try:
                await self._flush()
                flushed = "usage counts flushed"
            except Exception as exc:
                flushed = f"usage counts not flushed: {exc}"
        if self._figures is not None and self.membership is not None:
            role = self.membership.role
            figures.withdraw(self._figures, figures.socket_path(role.peers, role.index))
            self._figures = None
        if self.membership is not None:
            self.membership.stop()
        if self._guard is not None:
            self._guard.access.flush()
        if self.metrics is not None:
            self.metrics.close()
        if self._maker is not None:
            self._maker.close()
        if self.services is not None:
            self.services.keys.signing.close()
        backend = ""
        if self._store is not None:
            backend = self._store.backend
            await self._store.close()
            self._store = None
        if self.services is not None:
            log.info(
                "keyturn stopped",
                extra={
                    "category": "app",
                    "streams_ended": streams,
                    "drain_seconds": round(time.monotonic() - started, 3),
                    "scheduler_lease_released": led,
                    "flush": flushed,
                    "store": backend,
                },
            )
