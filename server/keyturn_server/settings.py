"""Flags and environment, resolved once into an immutable Settings object.

Precedence: a flag, then its environment variable, then the default. Variables of the
original specification are honoured: PORT, KEY_STORAGE_PATH, LOG_LEVEL, MASTER_KEY.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from keyturn_server.domain.config import MIN_DURATION

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
    metrics_listen: str | None = None
    #: HTTP/JSON listeners (the transcoded API, /api/key-management, /openapi.json);
    #: empty: none. Same TLS settings as gRPC.
    http_listen: tuple[str, ...] = ()
    #: The listener is the default one: when its port is taken, the server says so and
    #: serves gRPC only, instead of refusing to start (an explicit address must bind).
    http_listen_is_default: bool = False
    destroy_delay: timedelta = timedelta(hours=24)
    event_retention: timedelta = timedelta(days=7)
    heartbeat_interval: timedelta = timedelta(seconds=30)
    watch_queue_size: int = 1024
    caller_rate_limit: float = 1000.0
    caller_burst: int = 2000
    #: Pending RPCs the server queues before refusing (a burst of stream opens).
    max_pending_requests: int = 50_000
    grace_period: timedelta = timedelta(seconds=10)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def check(self) -> Settings:
        if self.insecure_no_auth:
            outside = [a for a in (*self.listen, *self.http_listen) if not is_loopback(a)]
            if outside:
                raise SettingsError(
                    "--insecure-no-auth is only allowed when every listen address is loopback; "
                    f"refusing {', '.join(outside)}"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("--tls-cert and --tls-key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise SettingsError("--client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.production and self.insecure_no_auth:
            raise SettingsError("--insecure-no-auth cannot be used with --production")
        for address in (*self.listen, *self.http_listen):
            split_address(address)
        if self.metrics_listen:
            split_address(self.metrics_listen)
        return self


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(address: str) -> bool:
    host, _ = split_address(address)
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument(
        "--client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)"
    )
    parser.add_argument("--metrics-listen", help="HOST:PORT for Prometheus metrics")
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
        "--heartbeat",
        type=lambda text: parse_duration(text, minimum=timedelta(seconds=0.1)),
        help="WatchExpiring heartbeat interval (default 30s)",
    )
    parser.add_argument(
        "--caller-rate-limit",
        type=float,
        help="requests per second per caller, 0 for none (default 1000)",
    )


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    defaults = Settings()
    listen = tuple(args.listen or ())
    if not listen:
        port = env.get("PORT")
        listen = (f"127.0.0.1:{port}",) if port else defaults.listen
    data_dir = args.data_dir or env.get("DATA_DIR") or env.get("KEY_STORAGE_PATH") or "data"
    production = (
        bool(args.production)
        or env.get("KEYTURN_ENV", "").lower() == "production"
        or env.get("NODE_ENV", "").lower() == "production"
    )
    http_listen, http_default = _http_listen(args.http_listen, env.get("KEYTURN_HTTP_LISTEN"))
    return Settings(
        listen=listen,
        data_dir=Path(data_dir),
        store=args.store or env.get("KEYTURN_STORE", ""),
        log_level=env.get("LOG_LEVEL", "info"),
        production=production,
        insecure_no_auth=bool(args.insecure_no_auth),
        master_key=env.get("MASTER_KEY") or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        metrics_listen=args.metrics_listen or env.get("KEYTURN_METRICS_LISTEN") or None,
        http_listen=http_listen,
        http_listen_is_default=http_default,
        destroy_delay=args.destroy_delay or defaults.destroy_delay,
        event_retention=args.event_retention or defaults.event_retention,
        heartbeat_interval=args.heartbeat or defaults.heartbeat_interval,
        caller_rate_limit=(
            defaults.caller_rate_limit if args.caller_rate_limit is None else args.caller_rate_limit
        ),
    ).check()


def _http_listen(flags: list[str] | None, variable: str | None) -> tuple[tuple[str, ...], bool]:
    """The HTTP listeners from --http-listen (repeatable) or KEYTURN_HTTP_LISTEN
    (comma-separated), and whether they are the default."""
    if flags is None and variable is None:
        return (DEFAULT_HTTP_LISTEN,), True
    given = flags if flags is not None else (variable or "").split(",")
    addresses = tuple(a.strip() for a in given if a.strip() and a.strip().lower() != "off")
    return addresses, False
