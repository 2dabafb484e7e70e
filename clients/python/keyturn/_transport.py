"""How the client reaches the server: TLS (optionally mutual) unless the address is
loopback or plaintext is asked for, the bearer token, and channel options that make a
restarted server reachable again quickly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from keyturn._policy import is_loopback

#: What ``AsyncClient(tls=...)`` accepts: None (the default) for plaintext to a loopback
#: address and TLS with the system's roots to any other; True for TLS with the system's
#: roots; a TLS object for a private CA, a client certificate, or both; False for
#: plaintext to any address (a TLS-terminating proxy next to the client, say).
TLSLike: TypeAlias = "TLS | bool | None"

ChannelOptions: TypeAlias = Sequence[tuple[str, Any]]

# gRPC's own reconnect backoff grows to 120 s: after a long outage a call could fail fast
# for minutes after the server is back. Cap it so that our retries find the server soon.
# Keepalive (the policy's, clients/README.md): with a call open, a ping after 60 s and the
# connection closed when it goes unanswered for 20 s, so that a watch on a connection that
# went silent (the server's host gone, a partition) reconnects instead of waiting forever.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
)


@dataclass(frozen=True)
class TLS:
    """TLS settings. Leave ``root_certificates`` empty to trust the system's roots; give
    ``certificate_chain`` and ``private_key`` for mutual TLS."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    #: Name to check the server's certificate against, when it differs from the address.
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TLS:
        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("certificate_chain and private_key go together (mutual TLS)")
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def open_channel(
    address: str, tls: TLSLike = None, options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """A channel to ``address`` (HOST:PORT); ``options`` override the defaults."""
    merged = dict(DEFAULT_CHANNEL_OPTIONS)
    merged.update(dict(options))
    if not uses_tls(address, tls):
        return grpc.aio.insecure_channel(address, options=list(merged.items()))
    settings = tls if isinstance(tls, TLS) else TLS()
    if settings.server_name:
        merged["grpc.ssl_target_name_override"] = settings.server_name
    return grpc.aio.secure_channel(address, settings.credentials(), options=list(merged.items()))


def uses_tls(address: str, tls: TLSLike) -> bool:
    """TLS unless told otherwise (False) or, by default (None), to a loopback address."""
    if tls is None:
        return not is_loopback(address)
    return tls is not False


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata for each Keyturn call: ``authorization: Bearer <token>`` when there is one.
    A header carries visible ASCII only: a token with anything else (a line break read from
    a file, non-ASCII pasted in) is refused here, without repeating it, rather than failing
    every call with grpc's ExecuteBatchError."""
    if not token:
        return ()
    if not (token.isascii() and token.isprintable() and " " not in token):
        raise ValueError(
            f"the bearer token ({len(token)} characters) holds characters a header cannot "
            "carry: whitespace, a line break, a control character or non-ASCII"
        )
    return (("authorization", f"Bearer {token}"),)
