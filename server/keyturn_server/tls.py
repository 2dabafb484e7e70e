"""TLS from PEM files: where the server's certificate is, the credentials it serves with,
and the channel the health probe opens to it.

A certificate is named by explicit paths (``--tls-cert``/``--tls-key``) or found in a
directory laid out like a Kubernetes TLS secret (``tls.crt``, ``tls.key``), which is how
the container takes one: mounted at ``/tls``. Files are parsed and matched at start, so a
wrong file ends the start with one line instead of an opaque handshake failure later.

The probe trusts exactly the certificate the server serves (gRPC accepts a leaf as its
own trust anchor) and checks it under a name the certificate carries, so the probe needs
no CA bundle and skips no verification, on loopback or anywhere else.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


class TlsError(ValueError):
    """A certificate, key or CA file is missing, unreadable, or does not fit the others."""


@dataclass(frozen=True)
class CertificateFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None


def locate(cert: Path | None, key: Path | None, directory: Path | None) -> tuple[Path, Path] | None:
    """Explicit paths win; otherwise ``directory`` if it holds a certificate; else none."""
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise TlsError("--tls-cert and --tls-key go together")
        return cert, key
    if directory is None:
        return None
    cert, key = directory / CERT_FILE, directory / KEY_FILE
    if not cert.exists() and not key.exists():
        return None
    if not cert.exists() or not key.exists():
        present, missing = (cert, key) if cert.exists() else (key, cert)
        raise TlsError(f"{present} is there but {missing} is missing")
    return cert, key


def load(files: CertificateFiles) -> tuple[bytes, bytes, bytes | None]:
    """Certificate chain, private key and client CA as PEM, checked to belong together."""
    chain = _read(files.cert, "--tls-cert")
    private = _read(files.key, "--tls-key")
    try:
        certificates = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise TlsError(f"{files.cert} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(private, password=None)
    except (ValueError, TypeError):
        raise TlsError(f"{files.key} holds no unencrypted PEM private key") from None
    if _public(key) != certificates[0].public_key().public_bytes(*_SPKI):
        raise TlsError(f"{files.key} is not the private key of {files.cert}")
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read(files.client_ca, "--client-ca")
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise TlsError(f"{files.client_ca} holds no PEM certificate") from None
    return chain, private, client_ca


def http_context(files: CertificateFiles, client_ca: bytes | None) -> ssl.SSLContext:
    """TLS for the HTTP listener as for gRPC: the server's certificate (from the files:
    Python loads a chain from files only), and with ``client_ca`` (PEM) mutual TLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    context.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        context.load_verify_locations(cadata=client_ca.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def probe_channel(address: str, files: CertificateFiles) -> grpc.Channel:
    """A channel to the server that serves ``files``, verified against that certificate.

    Under mutual TLS the probe presents the server's own certificate, which the client CA
    must therefore accept (one internal CA signing both is the usual setup).
    """
    chain, private, client_ca = load(files)
    first = x509.load_pem_x509_certificates(chain)[0]
    credentials = (
        grpc.ssl_channel_credentials(chain, private, chain)
        if client_ca is not None
        else grpc.ssl_channel_credentials(chain)
    )
    return grpc.secure_channel(
        address, credentials, options=[("grpc.ssl_target_name_override", target_name(first))]
    )


def target_name(certificate: x509.Certificate) -> str:
    """A name ``certificate`` is valid for: its first DNS or IP SAN, else its common name."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    for dns in names.get_values_for_type(x509.DNSName):
        # A wildcard covers one label; any concrete label stands in for it.
        return "probe" + dns[1:] if dns.startswith("*.") else dns
    for ip in names.get_values_for_type(x509.IPAddress):
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return str(ip)
    common = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if common:
        return str(common[0].value)
    raise TlsError("the server certificate names no host (no SAN, no CN)")


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public(key: PrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(*_SPKI)


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{flag} {path}: {exc.strerror or exc}") from None
