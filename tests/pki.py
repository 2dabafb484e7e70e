"""A throwaway certificate authority for tests: a CA and the certificates it issues, written
as PEM in the layout the server's --tls-dir takes (tls.crt, tls.key, plus ca.crt).

``python -m tests.pki DIR`` writes one for the container smoke test."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: What the test server certificate is valid for.
SERVER_NAMES = ("keyturn.test", "localhost", "127.0.0.1")


@dataclass(frozen=True)
class Issued:
    cert: bytes
    key: bytes


class Authority:
    def __init__(self, name: str = "Keyturn test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.now(UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        names: tuple[str, ...] = SERVER_NAMES,
        common_name: str = "",
        valid_for: timedelta = timedelta(days=1),
    ) -> Issued:
        """A leaf for server and client use, valid for ``names`` (DNS names, IPs, or URIs
        such as SPIFFE ids) from now on for ``valid_for``; ``common_name`` defaults to the
        first name."""
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = []
        for name in names:
            if "://" in name:
                alternatives.append(x509.UniformResourceIdentifier(name))
                continue
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or names[0])])
            )
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + valid_for)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if alternatives:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternatives), critical=False
            )
        certificate = builder.sign(self._key, hashes.SHA256())
        return Issued(
            certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def write(
        self,
        directory: Path,
        names: tuple[str, ...] = SERVER_NAMES,
        valid_for: timedelta = timedelta(days=1),
    ) -> Issued:
        """tls.crt, tls.key and ca.crt in ``directory`` (a Kubernetes TLS secret's layout)."""
        directory.mkdir(parents=True, exist_ok=True)
        issued = self.issue(names, valid_for=valid_for)
        (directory / "tls.crt").write_bytes(issued.cert)
        (directory / "tls.key").write_bytes(issued.key)
        (directory / "ca.crt").write_bytes(self.pem)
        return issued


if __name__ == "__main__":
    Authority().write(Path(sys.argv[1]))
