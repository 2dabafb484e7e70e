"""TLS from a mounted certificate: the server serves it, the health probe trusts exactly it,
clients with the CA get through, and wrong files stop the start with one line."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

import keyturn
from keyturn_server import cli, probe
from keyturn_server.clock import ManualClock
from keyturn_server.tls import TlsError
from tests.harness import MASTER_KEY, Harness
from tests.pki import Authority
from tests.process import free_port
from tests.test_metrics import scrape


@pytest.fixture
def authority() -> Authority:
    return Authority()


@pytest.fixture
async def tls_server(
    tmp_path: Path, clock: ManualClock, authority: Authority
) -> AsyncIterator[Harness]:
    authority.write(tmp_path / "tls")
    harness = Harness(
        tmp_path / "data",
        clock,
        tls_cert=tmp_path / "tls" / "tls.crt",
        tls_key=tmp_path / "tls" / "tls.key",
    )
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


def run_probe(address: str, env: dict[str, str]) -> int:
    return probe.main([address], env)


async def test_the_probe_trusts_the_mounted_certificate_and_nothing_else(
    tls_server: Harness, tmp_path: Path
) -> None:
    address = tls_server.address
    mounted = {"KEYTURN_TLS_DIR": str(tmp_path / "tls")}
    assert await asyncio.to_thread(run_probe, address, mounted) == 0
    assert await asyncio.to_thread(run_probe, address, {}) == 1  # plaintext to a TLS port
    # Same names, another authority's key: verification refuses it.
    Authority().write(tmp_path / "impostor")
    impostor = {"KEYTURN_TLS_DIR": str(tmp_path / "impostor")}
    assert await asyncio.to_thread(run_probe, address, impostor) == 1


async def test_clients_with_the_ca_get_through_and_others_do_not(
    tls_server: Harness, tmp_path: Path
) -> None:
    ca = tmp_path / "tls" / "ca.crt"
    port = tls_server.address.rsplit(":", 1)[1]
    trusted = keyturn.TLS.from_files(ca=ca, server_name="keyturn.test")
    async with keyturn.AsyncClient(f"127.0.0.1:{port}", tls_server.admin_token, trusted) as client:
        created = await client.generate_key("encryption")
        listed = await client.list_keys()
        assert [key.id for key in listed.keys] == [created.key.id]
    async with keyturn.AsyncClient(
        f"localhost:{port}", tls_server.admin_token, keyturn.TLS.from_files(ca=ca)
    ) as client:
        assert (await client.get_health()).health.version
    untrusted = keyturn.AsyncClient(
        f"127.0.0.1:{port}",
        tls_server.admin_token,
        keyturn.TLS(root_certificates=Authority().pem, server_name="keyturn.test"),
        retry=keyturn.NO_RETRY,
        timeout=3,
    )
    async with untrusted:
        with pytest.raises(keyturn.Unavailable):
            await untrusted.list_keys()


async def test_the_operator_command_checks_the_certificate_under_the_name_it_is_given(
    tmp_path: Path,
    clock: ManualClock,
    authority: Authority,
    capsys: pytest.CaptureFixture[str],
) -> None:
    authority.write(tmp_path / "tls", names=("keyturn.test",))  # no IP: the name must be given
    harness = Harness(
        tmp_path / "data",
        clock,
        tls_cert=tmp_path / "tls" / "tls.crt",
        tls_key=tmp_path / "tls" / "tls.key",
    )
    await harness.start()
    try:
        ca = str(tmp_path / "tls" / "ca.crt")
        trusted = keyturn.TLS.from_files(ca=ca, server_name="keyturn.test")
        async with keyturn.AsyncClient(harness.address, harness.admin_token, trusted) as client:
            created = (await client.generate_key("api")).key
        argv = ["keys", "list", "--address", harness.address, "--token", harness.admin_token]
        argv += ["--ca", ca, "--server-name", "keyturn.test"]
        assert await asyncio.to_thread(cli.main, argv) == 0
        assert created.id in capsys.readouterr().out
    finally:
        await harness.stop()


async def test_under_mutual_tls_the_probe_presents_the_server_certificate(
    tmp_path: Path, clock: ManualClock, authority: Authority
) -> None:
    authority.write(tmp_path / "tls")
    harness = Harness(
        tmp_path / "data",
        clock,
        tls_cert=tmp_path / "tls" / "tls.crt",
        tls_key=tmp_path / "tls" / "tls.key",
        client_ca=tmp_path / "tls" / "ca.crt",
    )
    await harness.start()
    try:
        env = {"KEYTURN_TLS_DIR": str(tmp_path / "tls")}
        assert await asyncio.to_thread(run_probe, harness.address, env) == 1  # no client cert
        env["KEYTURN_CLIENT_CA"] = str(tmp_path / "tls" / "ca.crt")
        assert await asyncio.to_thread(run_probe, harness.address, env) == 0
    finally:
        await harness.stop()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ("garbage-cert", "holds no PEM certificate"),
        ("garbage-key", "holds no unencrypted PEM private key"),
        ("another-key", "is not the private key of"),
        ("missing-cert", "No such file"),
    ],
)
async def test_a_wrong_certificate_file_stops_the_start(
    tmp_path: Path, clock: ManualClock, authority: Authority, mistake: str, message: str
) -> None:
    issued, other = authority.issue(), authority.issue()
    cert = write(tmp_path / "tls.crt", issued.cert)
    key = write(tmp_path / "tls.key", issued.key)
    if mistake == "garbage-cert":
        write(cert, b"not a certificate")
    elif mistake == "garbage-key":
        write(key, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    elif mistake == "another-key":
        write(key, other.key)
    else:
        cert.unlink()
    harness = Harness(tmp_path / "data", clock, tls_cert=cert, tls_key=key)
    with pytest.raises(TlsError, match=message):
        await harness.start()
    assert not (tmp_path / "data").exists()  # refused before the store was opened


def test_production_serves_tls_on_all_interfaces_from_a_mounted_directory(
    tmp_path: Path, authority: Authority
) -> None:
    """What the container does: `keyturn serve --listen 0.0.0.0:PORT` in production with
    the certificate mounted, then a client on loopback with the CA, then a clean stop."""
    authority.write(tmp_path / "tls")
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "keyturn_server", "serve", "--listen", f"0.0.0.0:{port}"],
        env={
            **environment,
            "MASTER_KEY": MASTER_KEY,
            "KEYTURN_ENV": "production",
            "KEYTURN_TLS_DIR": str(tmp_path / "tls"),
            "DATA_DIR": str(tmp_path / "data"),
            "LOG_LEVEL": "warning",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("keyturn listening on"):
                break
        else:
            raise AssertionError("server did not start")
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        env = {"KEYTURN_TLS_DIR": str(tmp_path / "tls"), "PORT": str(port)}
        assert probe.main([], env) == 0  # the address comes from PORT, as in the container
        tls = keyturn.TLS.from_files(ca=tmp_path / "tls" / "ca.crt")
        with keyturn.Client(f"127.0.0.1:{port}", token, tls) as client:
            assert client.generate_key("signing").key.id
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "plaintext" not in stderr.lower()  # no warning: it serves TLS


# --- a renewed certificate (certificates.py) --------------------------------------------


def served_serial(port: int, ca: Path, alpn: str) -> int:
    """The serial number of the certificate a new TLS connection to ``port`` is given."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols([alpn])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="keyturn.test") as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serial_of(issued_pem: bytes) -> int:
    return x509.load_pem_x509_certificate(issued_pem).serial_number


async def serials(harness: Harness, ca: Path) -> tuple[int, int]:
    """(gRPC, HTTP): what each listener serves to a new connection now."""
    grpc_port = int(harness.address.rsplit(":", 1)[1])
    http_port = int(harness.http_url.rsplit(":", 1)[1])
    return (
        await asyncio.to_thread(served_serial, grpc_port, ca, "h2"),
        await asyncio.to_thread(served_serial, http_port, ca, "http/1.1"),
    )


async def test_a_renewed_certificate_is_served_without_a_restart(
    tls_server: Harness, tmp_path: Path, authority: Authority
) -> None:
    """cert-manager renews the mounted secret; before, the old certificate was served
    until a restart, and at its expiry every handshake failed."""
    assert tls_server.app is not None and tls_server.app.certificate is not None
    tls_server.app.certificate.check_every = 0  # look at the files at every handshake
    ca = tmp_path / "tls" / "ca.crt"
    first = serial_of((tmp_path / "tls" / "tls.crt").read_bytes())
    assert await serials(tls_server, ca) == (first, first)
    trusted = keyturn.TLS.from_files(ca=ca, server_name="keyturn.test")
    async with keyturn.AsyncClient(tls_server.address, tls_server.admin_token, trusted) as client:
        await client.get_health()  # a connection opened on the first certificate
        renewed = authority.write(tmp_path / "tls")
        assert await serials(tls_server, ca) == (serial_of(renewed.cert),) * 2
        assert (await client.get_health()).health.version  # the open connection goes on


async def test_a_reload_takes_a_renewed_certificate_at_once(
    tls_server: Harness, tmp_path: Path, authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGHUP (App.reload) looks at the files now, not at the next check."""
    assert tls_server.app is not None and tls_server.app.certificate is not None
    tls_server.app.certificate.check_every = 3600  # no look of its own during the test
    renewed = authority.write(tmp_path / "tls")
    with caplog.at_level(logging.INFO, logger="keyturn.app"):
        tls_server.app.reload()
    assert tls_server.app.certificate.current.serial == serial_of(renewed.cert)
    assert "certificate changed" in caplog.text
    with caplog.at_level(logging.INFO, logger="keyturn.app"):
        tls_server.app.reload()
    assert "certificate unchanged" in caplog.text


async def test_new_files_that_do_not_fit_are_not_served(
    tls_server: Harness, tmp_path: Path, authority: Authority
) -> None:
    """A renewal caught half way (the certificate written, not yet its key) keeps the
    certificate that works; the pair is served once it fits."""
    assert tls_server.app is not None and tls_server.app.certificate is not None
    tls_server.app.certificate.check_every = 0
    ca, directory = tmp_path / "tls" / "ca.crt", tmp_path / "tls"
    first = serial_of((directory / "tls.crt").read_bytes())
    renewed = authority.issue()
    write(directory / "tls.crt", renewed.cert)  # its key is not there yet
    assert await serials(tls_server, ca) == (first, first)
    write(directory / "tls.key", renewed.key)
    assert await serials(tls_server, ca) == (serial_of(renewed.cert),) * 2


async def test_the_served_certificate_s_expiry_is_a_metric(
    tls_server: Harness, tmp_path: Path, authority: Authority
) -> None:
    """An alert on it fires when a renewal did not arrive, before handshakes fail."""
    await tls_server.restart(metrics_listen="127.0.0.1:0")
    assert tls_server.app is not None and tls_server.app.certificate is not None
    tls_server.app.certificate.check_every = 0

    def expiry() -> float:
        text = scrape_now_sync(tls_server)
        (line,) = [ln for ln in text.splitlines() if ln.startswith(EXPIRY_METRIC + " ")]
        return float(line.split()[1])

    first = x509.load_pem_x509_certificate((tmp_path / "tls" / "tls.crt").read_bytes())
    assert await asyncio.to_thread(expiry) == first.not_valid_after_utc.timestamp()
    renewed = authority.write(tmp_path / "tls", valid_for=timedelta(days=2))
    tls_server.app.certificate.check()
    later = x509.load_pem_x509_certificate(renewed.cert).not_valid_after_utc.timestamp()
    assert later > first.not_valid_after_utc.timestamp()
    assert await asyncio.to_thread(expiry) == later


EXPIRY_METRIC = "keyturn_tls_certificate_expiry_timestamp_seconds"


def scrape_now_sync(harness: Harness) -> str:
    assert harness.app is not None and harness.app.metrics_port is not None
    return scrape(harness.app.metrics_port)


async def test_a_rotated_client_ca_admits_its_clients_and_no_longer_the_old_ones(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Mutual TLS: the client CA file replaced by the next CA's takes effect for new
    connections, both ways: its clients get in, the retired CA's no longer do."""
    retired, current = Authority("retired client CA"), Authority("current client CA")
    directory = tmp_path / "tls"
    retired.write(directory)  # the server's own certificate, by the retired CA: no matter
    client_ca = write(directory / "client-ca.crt", retired.pem)
    harness = Harness(
        tmp_path / "data",
        clock,
        tls_cert=directory / "tls.crt",
        tls_key=directory / "tls.key",
        client_ca=client_ca,
    )
    await harness.start()
    try:
        assert harness.app is not None and harness.app.certificate is not None
        harness.app.certificate.check_every = 0

        async def admitted(authority: Authority) -> bool:
            issued = authority.issue(("spiffe://example.org/caller",))  # a new connection each
            tls = keyturn.TLS(retired.pem, issued.cert, issued.key, "keyturn.test")
            client = keyturn.AsyncClient(
                harness.address, harness.admin_token, tls, retry=keyturn.NO_RETRY, timeout=5
            )
            async with client:
                try:
                    await client.get_health()
                except keyturn.Unavailable:  # the handshake was refused
                    return False
            return True

        assert (await admitted(retired), await admitted(current)) == (True, False)
        write(client_ca, current.pem)
        assert (await admitted(retired), await admitted(current)) == (False, True)
    finally:
        await harness.stop()
