"""The flags of ``keyturn serve``: each one's type, its check and its help. What they
say, with the environment and the defaults, becomes Settings in :mod:`settings`."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

from keyturn_server.process.worker import AUTO_CAP
from keyturn_server.settings import (
    DEFAULT_HTTP_LISTEN,
    parse_duration,
    parse_liveness_limit,
    parse_positive,
)
from keyturn_server.tls import CERT_FILE, KEY_FILE


def _or_off(text: str, minimum: timedelta) -> timedelta:
    """ "off" or "0" (a zero duration, which ``resolve`` makes None), or a duration of at
    least ``minimum``."""
    if text.strip() in ("0", "off"):
        return timedelta(0)
    return parse_duration(text, minimum=minimum)


def parse_connection_age(text: str) -> timedelta:
    """--max-connection-age: "off" (connections are kept), or at least a second."""
    return _or_off(text, timedelta(seconds=1))


def _retention(text: str) -> timedelta:
    """--handle-retention: "off" (kept for ever), or at least an hour."""
    return _or_off(text, timedelta(hours=1))


def _clock_step(text: str) -> timedelta:
    """--max-clock-step: "off" (follow any step forward), or at least a minute."""
    return _or_off(text, timedelta(minutes=1))


def _audit_retention(text: str) -> timedelta:
    """--audit-retention: "off" (kept for ever), or at least a day: "400" (seconds) or
    "40m" typed for days must not erase the audit trail within the hour."""
    return _or_off(text, timedelta(days=1))


def _budget(text: str) -> int:
    try:
        value = int(text.replace("_", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 2 <= value <= 2**32:
        raise argparse.ArgumentTypeError("must be between 2 and 2^32 (4294967296)")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        action="append",
        help="HOST:PORT to serve on; repeatable (default 127.0.0.1:50051, or 127.0.0.1:$PORT)",
    )
    parser.add_argument(
        "--data-dir", help="data directory (DATA_DIR, KEY_STORAGE_PATH; default ./data)"
    )
    parser.add_argument(
        "--store",
        help="postgresql://... to share a PostgreSQL database "
        "between replicas (KEYTURN_STORE; default SQLite in the data dir)",
    )
    parser.add_argument(
        "--production",
        action="store_true",
        default=None,
        help="refuse to start without MASTER_KEY (also KEYTURN_ENV=production)",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="accept calls without a token (loopback only; development)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="server certificate chain (PEM; KEYTURN_TLS_CERT)"
    )
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM; KEYTURN_TLS_KEY)")
    parser.add_argument(
        "--tls-dir",
        type=Path,
        help=f"use {CERT_FILE} and {KEY_FILE} from this directory when they are there "
        "(a mounted Kubernetes TLS secret; KEYTURN_TLS_DIR)",
    )
    parser.add_argument(
        "--client-ca",
        type=Path,
        help="require client certificates signed by this CA (mutual TLS; KEYTURN_CLIENT_CA)",
    )
    parser.add_argument(
        "--client-identities",
        type=Path,
        help="TOML file mapping client certificates (URI SAN, DNS SAN or CN) to principals "
        "and roles; without it certificates name nobody (KEYTURN_CLIENT_IDENTITIES)",
    )
    parser.add_argument(
        "--allow-plaintext",
        action="store_true",
        default=None,
        help="serve plaintext off loopback because a TLS-terminating proxy sits in front "
        "(KEYTURN_ALLOW_PLAINTEXT=1); production refuses it otherwise",
    )
    parser.add_argument(
        "--metrics-listen",
        help="HOST:PORT for Prometheus metrics, loopback unless --allow-remote-metrics "
        "(KEYTURN_METRICS_LISTEN)",
    )
    parser.add_argument(
        "--allow-remote-metrics",
        action="store_true",
        default=None,
        help="let the unauthenticated metrics listener bind a non-loopback address "
        "(KEYTURN_ALLOW_REMOTE_METRICS=1)",
    )
    parser.add_argument(
        "--metrics-per-resource",
        action="store_true",
        default=None,
        help="export per-key expiry and rotation gauges labelled with key ids "
        "(KEYTURN_METRICS_PER_RESOURCE=1)",
    )
    parser.add_argument(
        "--http-listen",
        action="append",
        help="HOST:PORT for HTTP/JSON (the /v1 API, the specification's /api/key-management "
        f"and /openapi.json); repeatable; '' or 'off' disables it (KEYTURN_HTTP_LISTEN, "
        f"comma-separated; default {DEFAULT_HTTP_LISTEN})",
    )
    parser.add_argument(
        "--destroy-delay",
        type=parse_duration,
        help="waiting period before a removed key is destroyed (default 24h)",
    )
    parser.add_argument(
        "--event-retention",
        type=parse_duration,
        help="how long the event log keeps events for resuming (default 7d)",
    )
    parser.add_argument(
        "--handle-retention",
        type=_retention,
        help="how long handles that ended (expired, exhausted, revoked) are kept past the "
        "end of their maximum lifetime, then deleted with their secrets (default 30d; 'off': "
        "for ever)",
    )
    parser.add_argument(
        "--max-clock-step",
        type=_clock_step,
        help="the largest forward step of the system clock followed at once (default 1000s, "
        "as ntpd's panic threshold; 'off': any). A larger one is not followed, so that a "
        "clock that jumped does not expire every key version and handle it passed: the time "
        "runs on until the clock comes back in line, SIGHUP, or a restart",
    )
    parser.add_argument(
        "--audit-retention",
        type=_audit_retention,
        help="how long audit entries are kept in the store, then deleted oldest first, each "
        "deletion audited (default 400d; 'off': for ever; at least 1d). The log stream carries "
        "every entry for a longer record",
    )
    parser.add_argument(
        "--heartbeat",
        type=lambda text: parse_duration(text, minimum=timedelta(seconds=0.1)),
        help="WatchExpiring heartbeat interval (default 30s)",
    )
    parser.add_argument(
        "--scheduler-max-lag",
        type=parse_duration,
        help="health says the scheduler is NOT_SERVING when a deadline has been overdue "
        "this long (default 1m)",
    )
    parser.add_argument(
        "--scheduler-lease-ttl",
        type=parse_liveness_limit,
        help="PostgreSQL: a replica whose scheduler shows no sign of life this long loses "
        "the scheduler to another replica (KEYTURN_SCHEDULER_LEASE_TTL; default 15s; "
        "0 = never, at least 3s otherwise)",
    )
    parser.add_argument(
        "--replica-name",
        help="this replica's name in the scheduler lease and health (KEYTURN_REPLICA_NAME; "
        "default host:pid)",
    )
    parser.add_argument(
        "--nonce-budget",
        type=_budget,
        help="AES-GCM encryptions allowed per key version (default 2^32, the NIST SP 800-38D "
        "limit for random nonces); keys rotate when their primary has used half",
    )
    parser.add_argument(
        "--caller-rate-limit",
        type=float,
        help="requests per second per caller and serving process, 0 for none (default 1000)",
    )
    parser.add_argument(
        "--caller-max-in-flight",
        type=_whole,
        help="calls one caller may have in progress at once, per serving process, 0 for no "
        "cap (default 1000); past it its calls are refused at once (CALLER_IN_FLIGHT)",
    )
    parser.add_argument(
        "--caller-max-writes",
        type=_whole,
        help="writes one caller may have waiting for the store or committing at once, per "
        "serving process, 0 for no share (default 16); its others wait for its own, so "
        "that its flood does not queue every other caller's writes behind it",
    )
    parser.add_argument(
        "--workers",
        help="serving processes sharing the port and the database: a number, or auto "
        f"(one per available core, at most {AUTO_CAP}); KEYTURN_WORKERS; default 1",
    )
    parser.add_argument(
        "--worker-timeout",
        type=parse_liveness_limit,
        help="with --workers: a worker whose event loop has not run this long is killed "
        "and restarted (KEYTURN_WORKER_TIMEOUT; default 30s; 0 = never, at least 3s "
        "otherwise)",
    )
    parser.add_argument(
        "--max-connections",
        type=parse_positive,
        help="connections the gRPC listeners, and apart the HTTP listeners, may hold "
        "(KEYTURN_MAX_CONNECTIONS; default: a share of the open files limit, at most 10000)",
    )
    parser.add_argument(
        "--http-idle-timeout",
        type=lambda text: parse_duration(text, minimum=timedelta(seconds=1)),
        help="close an HTTP connection with no request in progress this long: idle "
        "keep-alive, or headers still arriving (default 30s)",
    )
    parser.add_argument(
        "--max-connection-age",
        type=parse_connection_age,
        help="ask a gRPC client to reconnect once its connection is this old, so load "
        "spreads again over replicas and workers that restarted; calls and streams in "
        "progress finish on the old one (default 10m; 'off': never)",
    )
    parser.add_argument(
        "--max-streams-per-caller",
        type=parse_positive,
        help="open WatchExpiring streams per principal (default 100)",
    )
    parser.add_argument(
        "--max-streams-per-connection",
        type=parse_positive,
        help="calls and streams one gRPC connection may have open at once (HTTP/2 "
        "MAX_CONCURRENT_STREAMS; a client queues the rest): it bounds what a client "
        "that resets its calls as fast as it opens them costs (default 2000)",
    )
    parser.add_argument(
        "--max-key-generations",
        type=parse_positive,
        help="RSA key generations running at once, in worker processes (default: half "
        "the cores, at least 1)",
    )
    parser.add_argument(
        "--max-key-generations-per-caller",
        type=parse_positive,
        help="RSA key generations one principal may have running or queued (default 2)",
    )


def _whole(text: str) -> int:
    """A whole number, 0 or more."""
    if text.strip() == "0":
        return 0
    return parse_positive(text)
