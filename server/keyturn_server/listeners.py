"""Which listeners may serve without TLS, decided per listener.

Bearer tokens, handle secrets and key material cross every listener, so anything a network
attacker can reach must be TLS: a production server refuses a plaintext listener off
loopback unless the operator says a TLS-terminating proxy sits in front of it
(``--allow-plaintext``), and a development server says loudly that it is serving in clear.
The metrics listener has no authentication at all, so it stays on loopback unless
``--allow-remote-metrics`` opens it (TLS would not make it less public).

The rule is a pure function of one listener, so every listener the server gains (gRPC,
HTTP/JSON, metrics) is judged the same way and tested from one table.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

#: How to give the server a certificate, for refusals that do not know a better hint.
TLS_HINT = (
    "give it a certificate with --tls-cert and --tls-key (KEYTURN_TLS_CERT, KEYTURN_TLS_KEY) "
    "or a directory holding tls.crt and tls.key with --tls-dir (KEYTURN_TLS_DIR)"
)
PROXY_HINT = (
    "only if a TLS-terminating proxy sits in front of it, pass --allow-plaintext "
    "(KEYTURN_ALLOW_PLAINTEXT=1)"
)


class AddressError(ValueError):
    """An address is not HOST:PORT."""


@dataclass(frozen=True)
class Verdict:
    """What a listener may do: start silently, start with a warning, or not start."""

    refusal: str | None = None
    warning: str | None = None


ALLOWED = Verdict()


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AddressError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(address: str) -> bool:
    """True only for addresses no other machine can reach (an empty host is every interface)."""
    host, _ = split_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listener(
    address: str,
    *,
    what: str,
    tls: bool,
    allow_plaintext: bool,
    production: bool,
    tls_hint: str = TLS_HINT,
) -> Verdict:
    """Judge one listener that carries credentials (gRPC, HTTP/JSON).

    ``what`` names it in messages ("gRPC", "HTTP"); ``tls_hint`` says how this deployment
    gives the server a certificate (the container names its mount point).
    """
    if tls or is_loopback(address):
        return ALLOWED
    if allow_plaintext:
        return Verdict(
            warning=(
                f"serving {what} in plaintext on {address} because --allow-plaintext says a "
                "TLS-terminating proxy sits in front of it: nothing but that proxy may reach "
                "this port, or tokens and secrets cross the network in clear"
            )
        )
    if production:
        return Verdict(
            refusal=(
                f"refusing to serve {what} in plaintext on {address} in production: tokens "
                f"and secrets would cross the network in clear. To serve TLS, {tls_hint}; "
                f"{PROXY_HINT}"
            )
        )
    return Verdict(
        warning=(
            f"PLAINTEXT {what} ON {address}: tokens, handle secrets and key material cross the "
            f"network in clear to anyone who can reach this port. Production mode refuses this; "
            f"to serve TLS, {tls_hint}"
        )
    )


def check_metrics_listener(address: str, *, allow_remote: bool) -> Verdict:
    """Judge the Prometheus listener, which answers anyone without a token."""
    if is_loopback(address):
        return ALLOWED
    if allow_remote:
        return Verdict(
            warning=(
                f"serving metrics without authentication on {address} "
                "(--allow-remote-metrics): anyone who reaches this port reads them"
            )
        )
    return Verdict(
        refusal=(
            f"refusing to serve metrics on {address}: the metrics listener has no "
            "authentication, so it stays on loopback (e.g. --metrics-listen 127.0.0.1:9090); "
            "to let a scraper on another machine reach it, pass --allow-remote-metrics "
            "(KEYTURN_ALLOW_REMOTE_METRICS=1)"
        )
    )
