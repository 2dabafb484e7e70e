"""Flags (defined in :mod:`flags`) and environment, resolved once into an immutable
Settings object.

Precedence: a flag, then its environment variable, then the default. Variables of the
original specification are honoured: PORT, KEY_STORAGE_PATH, LOG_LEVEL, MASTER_KEY.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from keyturn_server.domain.config import MIN_DURATION
from keyturn_server.domain.write_shares import CALLER_WRITES
from keyturn_server.listeners import (
    TLS_HINT,
    AddressError,
    Verdict,
    check_listener,
    check_metrics_listener,
    is_loopback,
    split_address,
)
from keyturn_server.process.worker import WorkerRole, parse_workers
from keyturn_server.tls import CERT_FILE, KEY_FILE, CertificateFiles, TlsError, locate

__all__ = ["Settings", "SettingsError", "is_loopback", "resolve", "split_address"]

#: Where `keyturn serve` answers HTTP/JSON unless told otherwise: loopback only, so that
#: `make run` and curl work out of the box and nothing is exposed by default.
DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"


class SettingsError(ValueError):
    """A flag or environment variable has a value the server cannot use."""


@dataclass(frozen=True)
class Settings:
    listen: tuple[str, ...] = ("127.0.0.1:50051",)
    data_dir: Path = Path("data")
    #: "" for SQLite in data_dir, or a postgresql:// URL.
    store: str = ""
    log_level: str = "info"
    production: bool = False
    insecure_no_auth: bool = False
    master_key: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    #: Which principal and role a client certificate is (client_identities.py).
    client_identities: Path | None = None
    #: Where a mounted certificate is looked for (tls.crt, tls.key); named in refusals.
    tls_dir: Path | None = None
    #: A TLS-terminating proxy fronts the plaintext listeners (see listeners.py).
    allow_plaintext: bool = False
    metrics_listen: str | None = None
    allow_remote_metrics: bool = False
    #: Per-key gauges (key ids as labels) on the metrics listener.
    metrics_per_resource: bool = False
    #: HTTP/JSON listeners (the transcoded API, /api/key-management, /openapi.json);
    #: empty: none. Same TLS settings as gRPC.
    http_listen: tuple[str, ...] = ()
    #: The listener is the default one: when its port is taken, the server says so and
    #: serves gRPC only, instead of refusing to start (an explicit address must bind).
    http_listen_is_default: bool = False
    destroy_delay: timedelta = timedelta(hours=24)
    event_retention: timedelta = timedelta(days=7)
    #: Handles that ended are deleted this long after the end of their maximum lifetime
    #: (None: kept for ever).
    handle_retention: timedelta | None = timedelta(days=30)
    #: The largest forward step of the system clock followed at once (None: any); a
    #: larger one is held until the clock comes back in line or SIGHUP (clock.py).
    max_clock_step: timedelta | None = timedelta(seconds=1000)
    #: Audit entries are deleted from the store this long after they were written (None:
    #: kept for ever). The log stream carries every entry for a longer record elsewhere.
    audit_retention: timedelta | None = timedelta(days=400)
    heartbeat_interval: timedelta = timedelta(seconds=30)
    #: Due work older than this makes the scheduler NOT_SERVING on every replica.
    scheduler_max_lag: timedelta = timedelta(minutes=1)
    #: PostgreSQL: a scheduler holder that shows no sign of life this long has its lock
    #: session ended by a follower, which takes over (store/postgres/leadership.py).
    #: Zero: never (a frozen holder keeps the scheduler until it resumes or dies).
    scheduler_lease_ttl: timedelta = timedelta(seconds=15)
    #: This replica's name in the scheduler lease (default host:pid).
    replica_name: str = ""
    watch_queue_size: int = 1024
    #: AES-GCM encryptions per key version (NIST SP 800-38D with random nonces); a key
    #: rotates when its primary has used half (domain/nonce_budget.py).
    nonce_budget: int = 2**32
    caller_rate_limit: float = 1000.0
    caller_burst: int = 2000
    #: Unary calls one principal may have in progress at once, per serving process; 0:
    #: no cap (api/ratelimit.py). A tenth of the store's shared backlog.
    caller_max_in_flight: int = 1000
    #: Writes one principal may have waiting for the store or committing at once, per
    #: serving process; its others wait for its own (domain/write_shares.py). 0: no share.
    caller_max_writes: int = CALLER_WRITES
    #: Open WatchExpiring streams per principal.
    max_streams_per_caller: int = 100
    #: Calls and streams open at once on one gRPC connection (api/grpc_server.py).
    max_streams_per_connection: int = 2000
    #: Expensive key generations (RSA) running at once; None: half the cores.
    max_key_generations: int | None = None
    #: Expensive key generations one principal may have running or queued.
    max_key_generations_per_caller: int = 2
    #: gRPC calls from one address whose request message has not arrived, and how long
    #: one may wait for it (api/arrivals.py).
    max_waiting_calls_per_peer: int = 1000
    request_arrival_timeout: timedelta = timedelta(seconds=30)
    #: Pending RPCs the server queues before refusing (a burst of stream opens).
    max_pending_requests: int = 50_000
    #: Connections each listener kind (gRPC, HTTP) may hold; None: a share of the open
    #: files limit, at most 10,000 (connection_budget.py).
    max_connections: int | None = None
    #: An HTTP connection with no request in progress this long is closed: idle
    #: keep-alive, and request headers that never finish (api/http/connections.py).
    http_idle_timeout: timedelta = timedelta(seconds=30)
    #: A client is asked to reconnect once its gRPC connection is this old (None: never).
    max_connection_age: timedelta | None = timedelta(minutes=10)
    grace_period: timedelta = timedelta(seconds=10)
    #: Serving processes on one host (--workers); more than one starts a supervisor.
    workers: int = 1
    #: The supervisor kills (and restarts) a worker whose event loop has not said it runs
    #: for this long, as gunicorn's --timeout does; zero: never.
    worker_timeout: timedelta = timedelta(seconds=30)
    #: Set in a serving process that a supervisor started (process/worker.py).
    worker: WorkerRole | None = None

    @property
    def reuse_port(self) -> bool:
        """Share the listening ports with the other workers (only when told to)."""
        return self.worker is not None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def certificate(self) -> CertificateFiles | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        return CertificateFiles(self.tls_cert, self.tls_key, self.client_ca)

    def listeners(self) -> list[tuple[str, str]]:
        """(what, address) of every listener that serves the API with the server's TLS."""
        return [("gRPC", address) for address in self.listen] + [
            ("HTTP", address) for address in self.http_listen
        ]

    def verdicts(self) -> list[Verdict]:
        """The listener rule applied to every listener (listeners.py)."""
        hint = TLS_HINT
        if self.tls_dir is not None:
            hint = (
                f"mount a directory holding {CERT_FILE} and {KEY_FILE} at "
                f"{self.tls_dir} (nothing is there now), or give --tls-cert and --tls-key "
                "(KEYTURN_TLS_CERT, KEYTURN_TLS_KEY)"
            )
        found = [
            check_listener(
                address,
                what=what,
                tls=self.tls,
                allow_plaintext=self.allow_plaintext,
                production=self.production,
                tls_hint=hint,
            )
            for what, address in self.listeners()
        ]
        if self.metrics_listen:
            found.append(
                check_metrics_listener(self.metrics_listen, allow_remote=self.allow_remote_metrics)
            )
        return found

    def warnings(self) -> list[str]:
        """What the server says loudly at start (no authentication, plaintext off
        loopback, open metrics)."""
        found = [v.warning for v in self.verdicts() if v.warning]
        if self.insecure_no_auth:
            found.insert(
                0,
                "INSECURE: --insecure-no-auth makes every caller without a token an anonymous "
                "ADMIN (loopback only; for development). It can read, use and remove every "
                "key and handle; only access tokens cannot be created or revoked this way.",
            )
        return found

    def check(self) -> Settings:
        try:
            return self._check()
        except AddressError as exc:
            raise SettingsError(str(exc)) from None

    def _check(self) -> Settings:
        if self.insecure_no_auth:
            outside = [a for _, a in self.listeners() if not is_loopback(a)]
            if outside:
                raise SettingsError(
                    "--insecure-no-auth is only allowed when every listen address is loopback; "
                    f"refusing {', '.join(outside)}"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise SettingsError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.client_identities is not None and self.client_ca is None:
            raise SettingsError(
                "--client-identities maps client certificates, which only --client-ca "
                "(mutual TLS) asks for"
            )
        if self.production and self.insecure_no_auth:
            raise SettingsError("--insecure-no-auth cannot be used with --production")
        for address in (*self.listen, *self.http_listen):
            split_address(address)
        if self.metrics_listen:
            split_address(self.metrics_listen)
        for verdict in self.verdicts():
            if verdict.refusal:
                raise SettingsError(verdict.refusal)
        return self


def parse_duration(text: str, minimum: timedelta = MIN_DURATION) -> timedelta:
    """'90s', '15m', '24h', '7d' or plain seconds."""
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise SettingsError(f"{text!r} is not a duration like 30s, 15m, 24h or 7d") from None
    if value < minimum.total_seconds():
        raise SettingsError(f"{text!r} is shorter than {minimum.total_seconds():g} s")
    return timedelta(seconds=value)


#: A scheduler holder verifies its lease, and a worker says it runs, once a second:
#: shorter limits would end healthy ones.
MIN_LIVENESS_LIMIT = timedelta(seconds=3)


def parse_liveness_limit(text: str) -> timedelta:
    """ "0" or "off" (zero: never), or a duration of at least MIN_LIVENESS_LIMIT."""
    if text.strip() in ("0", "off"):
        return timedelta(0)
    return parse_duration(text, minimum=MIN_LIVENESS_LIMIT)


def _flag_then_variable(
    flag: timedelta | None, variable: str | None, default: timedelta
) -> timedelta:
    if flag is not None:
        return flag
    return parse_liveness_limit(variable) if variable else default


def _positive_setting(text: str | None, name: str) -> int | None:
    if not text:
        return None
    try:
        return parse_positive(text)
    except argparse.ArgumentTypeError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def parse_positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    defaults = Settings()
    data_dir = args.data_dir or env.get("DATA_DIR") or env.get("KEY_STORAGE_PATH") or "data"
    production = (
        bool(args.production)
        or env.get("KEYTURN_ENV", "").lower() == "production"
        or env.get("NODE_ENV", "").lower() == "production"
    )
    http_listen, http_default = _http_listen(args.http_listen, env.get("KEYTURN_HTTP_LISTEN"))
    files = certificate(args, env)
    worker = WorkerRole.from_env(env)
    listen = listen_addresses(args, env)
    if worker is not None:  # the supervisor resolved the addresses once for every worker
        listen, http_listen, http_default = worker.listen, worker.http_listen, False
    return Settings(
        listen=listen,
        data_dir=Path(data_dir),
        store=args.store or env.get("KEYTURN_STORE", ""),
        log_level=env.get("LOG_LEVEL", "info"),
        production=production,
        insecure_no_auth=bool(args.insecure_no_auth),
        master_key=env.get("MASTER_KEY") or None,
        tls_cert=files.cert if files else None,
        tls_key=files.key if files else None,
        client_ca=_path(args.client_ca, env.get("KEYTURN_CLIENT_CA")),
        tls_dir=_path(args.tls_dir, env.get("KEYTURN_TLS_DIR")),
        client_identities=_path(args.client_identities, env.get("KEYTURN_CLIENT_IDENTITIES")),
        allow_plaintext=_flag(args.allow_plaintext, env, "KEYTURN_ALLOW_PLAINTEXT"),
        metrics_listen=args.metrics_listen or env.get("KEYTURN_METRICS_LISTEN") or None,
        allow_remote_metrics=_flag(args.allow_remote_metrics, env, "KEYTURN_ALLOW_REMOTE_METRICS"),
        metrics_per_resource=_flag(args.metrics_per_resource, env, "KEYTURN_METRICS_PER_RESOURCE"),
        http_listen=http_listen,
        http_listen_is_default=http_default,
        destroy_delay=args.destroy_delay or defaults.destroy_delay,
        event_retention=args.event_retention or defaults.event_retention,
        handle_retention=(
            defaults.handle_retention if args.handle_retention is None else args.handle_retention
        )
        or None,
        max_clock_step=(
            defaults.max_clock_step if args.max_clock_step is None else args.max_clock_step
        )
        or None,
        audit_retention=(
            defaults.audit_retention if args.audit_retention is None else args.audit_retention
        )
        or None,
        heartbeat_interval=args.heartbeat or defaults.heartbeat_interval,
        scheduler_max_lag=args.scheduler_max_lag or defaults.scheduler_max_lag,
        http_idle_timeout=args.http_idle_timeout or defaults.http_idle_timeout,
        max_connection_age=(
            defaults.max_connection_age
            if args.max_connection_age is None
            else args.max_connection_age
        )
        or None,
        max_connections=args.max_connections
        or _positive_setting(env.get("KEYTURN_MAX_CONNECTIONS"), "KEYTURN_MAX_CONNECTIONS"),
        worker_timeout=_flag_then_variable(
            args.worker_timeout, env.get("KEYTURN_WORKER_TIMEOUT"), defaults.worker_timeout
        ),
        scheduler_lease_ttl=_flag_then_variable(
            args.scheduler_lease_ttl,
            env.get("KEYTURN_SCHEDULER_LEASE_TTL"),
            defaults.scheduler_lease_ttl,
        ),
        replica_name=args.replica_name or env.get("KEYTURN_REPLICA_NAME", ""),
        caller_rate_limit=(
            defaults.caller_rate_limit if args.caller_rate_limit is None else args.caller_rate_limit
        ),
        caller_max_in_flight=(
            defaults.caller_max_in_flight
            if args.caller_max_in_flight is None
            else args.caller_max_in_flight
        ),
        caller_max_writes=(
            defaults.caller_max_writes if args.caller_max_writes is None else args.caller_max_writes
        ),
        nonce_budget=args.nonce_budget or defaults.nonce_budget,
        workers=1 if worker is not None else _workers(args.workers, env.get("KEYTURN_WORKERS")),
        worker=worker,
        max_streams_per_caller=args.max_streams_per_caller or defaults.max_streams_per_caller,
        max_streams_per_connection=(
            args.max_streams_per_connection or defaults.max_streams_per_connection
        ),
        max_key_generations=args.max_key_generations,
        max_key_generations_per_caller=(
            args.max_key_generations_per_caller or defaults.max_key_generations_per_caller
        ),
    ).check()


def _workers(flag: str | None, variable: str | None) -> int:
    try:
        return parse_workers(flag or variable or "1")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def listen_addresses(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, ...]:
    if args.listen:
        return tuple(args.listen)
    port = env.get("PORT")
    return (f"127.0.0.1:{port}",) if port else Settings().listen


def certificate(args: argparse.Namespace, env: Mapping[str, str]) -> CertificateFiles | None:
    """The server certificate: flags, then their variables, then the mounted directory."""
    try:
        pair = locate(
            _path(args.tls_cert, env.get("KEYTURN_TLS_CERT")),
            _path(args.tls_key, env.get("KEYTURN_TLS_KEY")),
            _path(args.tls_dir, env.get("KEYTURN_TLS_DIR")),
        )
    except TlsError as exc:
        raise SettingsError(str(exc)) from None
    if pair is None:
        return None
    return CertificateFiles(*pair, _path(args.client_ca, env.get("KEYTURN_CLIENT_CA")))


def _path(flag: Path | None, variable: str | None) -> Path | None:
    return flag if flag is not None else (Path(variable) if variable else None)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(flag: bool | None, env: Mapping[str, str], name: str) -> bool:
    if flag:
        return True
    value = env.get(name, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise SettingsError(f"{name}={value!r} is not one of 1, true, yes, on, 0, false, no, off")
    return value in _TRUE


def _http_listen(flags: list[str] | None, variable: str | None) -> tuple[tuple[str, ...], bool]:
    """The HTTP listeners from --http-listen (repeatable) or KEYTURN_HTTP_LISTEN
    (comma-separated), and whether they are the default."""
    if flags is None and variable is None:
        return (DEFAULT_HTTP_LISTEN,), True
    given = flags if flags is not None else (variable or "").split(",")
    addresses = tuple(a.strip() for a in given if a.strip() and a.strip().lower() != "off")
    return addresses, False
