"""The certificate the listeners serve, read again when its files change.

Certificates are short-lived on purpose (cert-manager renews a mounted secret weeks
before it expires; SPIFFE's are hours), and a server that reads its files only at start
serves the old one until someone restarts it, and at its expiry every client refuses the
handshake at once. So both listeners take the files' current certificate at each new
handshake: gRPC through its dynamic credentials (a fetcher it calls per handshake), HTTP
by switching the handshake to a context built for it (an ``ssl.SSLContext`` can add a CA
but never drop one, so a rotated client CA needs a context of its own). Open connections
keep the certificate they started with.

The files are looked at (stat: inode, mtime, size, which a Kubernetes secret's symlink
swap changes) at most once per ``CHECK_EVERY``. A new set that does not load (a file
half written, a key that is not the certificate's, a CA file that is not PEM) is not
used: the old certificate is served and the log says why, once per change of the files.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import grpc
from cryptography import x509

from keyturn_server.tls import CertificateFiles, TlsError, http_context, load

log = logging.getLogger("keyturn.tls")
#: Seconds between two looks at the files (a handshake costs a stat of each, at most
#: this often).
CHECK_EVERY = 1.0

Stamp = tuple[tuple[int, int, int] | None, ...]


def _stamp(files: CertificateFiles) -> Stamp:
    found: list[tuple[int, int, int] | None] = []
    for path in (files.cert, files.key, files.client_ca):
        try:
            state = os.stat(path) if path is not None else None
        except OSError:
            state = None
        found.append(None if state is None else (state.st_ino, state.st_mtime_ns, state.st_size))
    return tuple(found)


@dataclass(frozen=True)
class Served:
    """A certificate as loaded from the files (checked to fit its key), and their state."""

    chain: bytes
    private: bytes
    client_ca: bytes | None
    serial: int
    not_after: datetime
    stamp: Stamp


def _read(files: CertificateFiles, stamp: Stamp) -> Served:
    chain, private, client_ca = load(files)
    leaf = x509.load_pem_x509_certificates(chain)[0]
    return Served(chain, private, client_ca, leaf.serial_number, leaf.not_valid_after_utc, stamp)


class ServedCertificate:
    """The listeners' certificate: ``current``, refreshed by ``check``."""

    def __init__(self, files: CertificateFiles) -> None:
        self.files = files
        #: Raises TlsError: wrong files stop the start, as before any reload.
        self.current = _read(files, _stamp(files))
        self._refused: Stamp | None = None
        self._looked = time.monotonic()
        self.check_every = CHECK_EVERY
        # gRPC calls the fetcher on its own threads; the loop calls check() too.
        self._lock = threading.Lock()
        self._given_to_grpc = self.current
        self._http: tuple[Served, ssl.SSLContext] | None = None

    def check(self, now: bool = False) -> Served:
        """The certificate to serve: the files' own if they changed and load, else the
        one served so far. Looks at the files at most once per ``check_every``, unless
        ``now`` (an operator's reload)."""
        moment = time.monotonic()
        with self._lock:
            if not now and moment - self._looked < self.check_every:
                return self.current
            self._looked = moment
            stamp = _stamp(self.files)
            if stamp in (self.current.stamp, self._refused):
                return self.current
            try:
                fresh = _read(self.files, stamp)
            except TlsError as exc:
                self._refused = stamp
                log.warning(
                    "new TLS files are not served (the previous certificate still is): %s",
                    exc,
                    extra={"category": "security", "serial": f"{self.current.serial:x}"},
                )
                return self.current
            self.current, self._refused = fresh, None
        log.info(
            "TLS certificate reloaded: new connections get it",
            extra={
                "category": "security",
                "serial": f"{fresh.serial:x}",
                "not_after": fresh.not_after.isoformat(),
            },
        )
        return fresh

    # --- gRPC ------------------------------------------------------------------------

    def grpc_credentials(self) -> grpc.ServerCredentials:
        def fetch() -> grpc.ServerCertificateConfiguration | None:
            served = self.check()
            if served is self._given_to_grpc:
                return None  # gRPC keeps the configuration it has
            self._given_to_grpc = served
            return _grpc_configuration(served)

        # gRPC documents None as "no change"; its type stubs do not say so.
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], fetch)
        return grpc.dynamic_ssl_server_credentials(
            _grpc_configuration(self.current),
            fetcher,
            require_client_authentication=self.current.client_ca is not None,
        )

    # --- HTTP ------------------------------------------------------------------------

    def http_context(self) -> ssl.SSLContext:
        """The listener's context: each handshake is switched to the context of the
        current certificate (the server-name callback runs for every ClientHello, with or
        without a name in it)."""
        listening = self._context_of(self.current)

        def switch(connection: ssl.SSLObject, _name: str | None, used: ssl.SSLContext) -> None:
            wanted = self._context_of(self.check())
            if wanted is not used:
                connection.context = wanted

        listening.sni_callback = switch
        return listening

    def _context_of(self, served: Served) -> ssl.SSLContext:
        known = self._http
        if known is not None and known[0] is served:
            return known[1]
        try:
            context = http_context(self.files, served.client_ca)
        except (OSError, ssl.SSLError) as exc:  # the files changed again since they loaded
            if known is None:  # at start: the files were just checked, so this is new
                raise
            log.warning(
                "new TLS files could not be read for HTTP: %s", exc, extra={"category": "security"}
            )
            return known[1]
        self._http = (served, context)
        return context


def _grpc_configuration(served: Served) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(served.private, served.chain)], root_certificates=served.client_ca
    )
