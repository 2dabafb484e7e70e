"""Mutual TLS proves that a CA vouched for a certificate's names, not what they may do
here. Certificates used to be matched to access-token names: ``CN=admin`` became the
admin, and a certificate named like a revoked token still got in as a service. Now
``--client-identities`` maps a certificate's URI SAN, DNS SAN or CN to a principal and a
role; unknown certificates are refused or get the configured default role (under a
prefixed name); a revoked principal's certificate is refused. Real certificates from a
test CA, over real mTLS channels."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import admin_pb2, events_pb2, keys_pb2, resources_pb2
from keyturn_server.client_identities import ClientIdentitiesError
from keyturn_server.clock import ManualClock
from tests.harness import MASTER_KEY, Client, Harness, fails
from tests.pki import Authority, Issued

BILLING = "spiffe://prod.example/ns/billing/sa/api"

IDENTITIES = f"""
[[identity]]
name = "billing"
role = "service"
uri = "{BILLING}"

[[identity]]
name = "ops"
role = "operator"
dns = "*.ops.example"
"""


@pytest.fixture
def authority() -> Authority:
    return Authority()


@pytest.fixture
async def mtls(tmp_path: Path, clock: ManualClock, authority: Authority) -> AsyncIterator[Harness]:
    authority.write(tmp_path / "tls")
    identities = tmp_path / "identities.toml"
    identities.write_text(IDENTITIES)
    harness = Harness(
        tmp_path / "data",
        clock,
        tls_cert=tmp_path / "tls" / "tls.crt",
        tls_key=tmp_path / "tls" / "tls.key",
        client_ca=tmp_path / "tls" / "ca.crt",
        client_identities=identities,
        heartbeat_interval=timedelta(seconds=0.2),
    )
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


def _as(server: Harness, authority: Authority, issued: Issued, token: str | None = None) -> Client:
    """A client presenting ``issued`` over mutual TLS (and a bearer token, if given)."""
    credentials = grpc.ssl_channel_credentials(authority.pem, issued.key, issued.cert)
    port = server.address.rsplit(":", 1)[1]
    channel = grpc.aio.secure_channel(f"localhost:{port}", credentials)
    server._channels.append(channel)
    return Client(channel, token)


def _admin(server: Harness, authority: Authority) -> Client:
    """The admin token, over mutual TLS (the server asks every client for a certificate)."""
    return _as(server, authority, authority.issue(names=(BILLING,)), token=server.admin_token)


def _rewrite(server: Harness, text: str) -> None:
    path = server.settings.client_identities
    assert path is not None and server.app is not None
    path.write_text(text)
    assert server.app.reload_client_identities()


async def test_cn_admin_is_not_the_admin(mtls: Harness, authority: Authority) -> None:
    impostor = _as(mtls, authority, authority.issue(names=(), common_name="admin"))
    refused = await fails(impostor.admin.ListAccessTokens(admin_pb2.ListAccessTokensRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.reason == "UNKNOWN_CLIENT_CERTIFICATE"


async def test_a_certificate_is_the_principal_and_role_it_is_configured_as(
    mtls: Harness, authority: Authority
) -> None:
    billing = _as(mtls, authority, authority.issue(names=(BILLING,), common_name="admin"))
    key = (await billing.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    assert key.owner == "billing"
    denied = await fails(billing.admin.ListAccessTokens(admin_pb2.ListAccessTokensRequest()))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED

    ops = _as(mtls, authority, authority.issue(names=("console.ops.example",)))
    seen = await ops.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))  # operators see all
    assert seen.owner == "billing"
    deeper = _as(mtls, authority, authority.issue(names=("a.b.ops.example",)))
    refused = await fails(deeper.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id)))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED  # '*' is one DNS label


async def test_an_unknown_certificate_gets_the_default_role_under_a_prefixed_name(
    mtls: Harness, authority: Authority
) -> None:
    stranger = authority.issue(names=("spiffe://prod.example/ns/other/sa/x",))
    refused = await fails(_as(mtls, authority, stranger).keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED

    admins_key = await _admin(mtls, authority).keys.GenerateKey(
        keys_pb2.GenerateKeyRequest(type="api")
    )
    _rewrite(mtls, 'default_role = "service"\n' + IDENTITIES)
    service = _as(mtls, authority, stranger)
    key = (await service.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))).key
    assert key.owner == "uri:spiffe://prod.example/ns/other/sa/x"
    named_admin = _as(mtls, authority, authority.issue(names=(), common_name="admin"))
    hidden = await fails(named_admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=admins_key.key.id)))
    assert hidden.code == grpc.StatusCode.NOT_FOUND  # "cn:admin" owns nothing of "admin"

    _rewrite(mtls, 'default_role = "auditor"\n' + IDENTITIES)
    auditor = _as(mtls, authority, stranger)
    await auditor.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_size=1))
    denied = await fails(auditor.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api")))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED


async def test_operators_filter_by_a_long_certificate_principal(
    mtls: Harness, authority: Authority
) -> None:
    """A default-role principal is "uri:" and the certificate's SPIFFE ID, which may be
    2048 bytes long; the owner filters took at most 64 characters (the audit log's
    principal filter 128), so nobody could list what such a principal owns."""
    spiffe = "spiffe://prod.example/" + "/".join(["s" * 63] * 31)  # 2006 characters
    spiffe += "/" + "y" * (2048 - len(spiffe) - 1)  # SPIFFE's longest
    _rewrite(mtls, 'default_role = "service"\n' + IDENTITIES)
    service = _as(mtls, authority, authority.issue(names=(spiffe,), common_name="long"))
    key = (await service.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))).key
    assert key.owner == f"uri:{spiffe}"

    mine = await service.keys.ListKeys(keys_pb2.ListKeysRequest(owner=key.owner))
    assert [k.id for k in mine.keys] == [key.id]
    admin = _admin(mtls, authority)
    listed = await admin.keys.ListKeys(keys_pb2.ListKeysRequest(owner=key.owner))
    assert [k.id for k in listed.keys] == [key.id]
    audited = await admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(principal=key.owner)
    )
    assert [e.resource_id for e in audited.events] == [key.id]
    watch = admin.keys.WatchExpiring(events_pb2.WatchExpiringRequest(owner=key.owner))
    first = await asyncio.wait_for(watch.read(), 5)
    assert first.kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE
    watch.cancel()

    longer = authority.issue(names=(spiffe + "z",), common_name="longer")
    refused = await fails(_as(mtls, authority, longer).keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED  # past what a filter can name
    too_long = await fails(admin.keys.ListKeys(keys_pb2.ListKeysRequest(owner=f"uri:{spiffe}z")))
    assert too_long.violations.keys() == {"owner"}


async def test_revoking_the_principal_refuses_its_certificate(
    mtls: Harness, authority: Authority
) -> None:
    issued = authority.issue(names=(BILLING,))
    await _as(mtls, authority, issued).keys.ListKeys(keys_pb2.ListKeysRequest())
    revoked = IDENTITIES.replace('role = "service"', 'role = "service"\nrevoked = true')
    _rewrite(mtls, 'default_role = "service"\n' + revoked)
    refused = await fails(_as(mtls, authority, issued).keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.reason == "CLIENT_CERTIFICATE_REVOKED"


async def test_an_open_stream_ends_when_its_certificate_maps_to_another_role(
    mtls: Harness, authority: Authority
) -> None:
    billing = _as(mtls, authority, authority.issue(names=(BILLING,)))
    stream = billing.keys.WatchExpiring(events_pb2.WatchExpiringRequest())
    first = await asyncio.wait_for(stream.read(), 5)
    assert first.kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE

    _rewrite(mtls, IDENTITIES.replace('role = "service"', 'role = "auditor"'))

    async def drain() -> None:
        while await stream.read() is not grpc.aio.EOF:
            pass

    # Heartbeats every 0.2 s: checked again within 1.2 s.
    ended = await fails(asyncio.wait_for(drain(), 5))
    assert ended.code == grpc.StatusCode.UNAUTHENTICATED
    assert ended.reason == "CREDENTIALS_CHANGED"


async def test_a_certificate_named_like_a_revoked_token_gets_nothing(
    mtls: Harness, authority: Authority
) -> None:
    admin = _admin(mtls, authority)
    await admin.admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(name="payments", role=resources_pb2.ROLE_OPERATOR)
    )
    await admin.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="payments"))
    named = _as(mtls, authority, authority.issue(names=(), common_name="payments"))
    refused = await fails(named.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api")))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED


async def test_without_an_identities_file_certificates_name_nobody(
    mtls: Harness, authority: Authority
) -> None:
    await mtls.restart(client_identities=None)
    anyone = _as(mtls, authority, authority.issue(names=(BILLING,)))
    refused = await fails(anyone.keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED
    assert refused.reason == "CLIENT_IDENTITIES_NOT_CONFIGURED"


async def test_an_edit_that_does_not_parse_keeps_the_previous_mapping(
    mtls: Harness, authority: Authority
) -> None:
    path = mtls.settings.client_identities
    assert path is not None and mtls.app is not None
    path.write_text(IDENTITIES + '\n[[identity]]\nname = "x"\nrole = "root"\ncn = "x"\n')
    assert not mtls.app.reload_client_identities()
    billing = _as(mtls, authority, authority.issue(names=(BILLING,)))
    await billing.keys.ListKeys(keys_pb2.ListKeysRequest())


BAD_FILES = {
    "not TOML": ("[[identity]\nname=", "not valid TOML"),
    "unknown key": ('[[identity]]\nname = "a"\nrole = "service"\ncn = "a"\nrule = 1\n', "rule"),
    "two names": ('[[identity]]\nname = "a"\nrole = "service"\ncn = "a"\ndns = "a"\n', "one of"),
    "no name kind": ('[[identity]]\nname = "a"\nrole = "service"\n', "exactly one of"),
    "bad role": ('[[identity]]\nname = "a"\nrole = "root"\ncn = "a"\n', "role must be"),
    "match all": ('[[identity]]\nname = "a"\nrole = "admin"\nuri = "*"\n', "match anything"),
    "bad principal": ('[[identity]]\nname = "Admin!"\nrole = "admin"\ncn = "a"\n', "name must"),
    "two roles": (
        '[[identity]]\nname = "a"\nrole = "admin"\ncn = "a"\n'
        '[[identity]]\nname = "a"\nrole = "service"\ncn = "b"\n',
        "two roles",
    ),
    "bad default": ('default_role = "god"\n', "default_role"),
}


@pytest.mark.parametrize(("text", "message"), BAD_FILES.values(), ids=BAD_FILES.keys())
async def test_a_bad_identities_file_stops_the_start(
    tmp_path: Path, clock: ManualClock, authority: Authority, text: str, message: str
) -> None:
    authority.write(tmp_path / "tls")
    identities = tmp_path / "identities.toml"
    identities.write_text(text)
    harness = Harness(
        tmp_path / "data",
        clock,
        tls_cert=tmp_path / "tls" / "tls.crt",
        tls_key=tmp_path / "tls" / "tls.key",
        client_ca=tmp_path / "tls" / "ca.crt",
        client_identities=identities,
    )
    with pytest.raises(ClientIdentitiesError, match=message) as raised:
        await harness.start()
    assert str(identities) in str(raised.value)
    assert not (tmp_path / "data").exists()  # refused before the store was opened


async def test_serve_says_in_one_line_which_entry_is_wrong(
    tmp_path: Path, authority: Authority
) -> None:
    authority.write(tmp_path / "tls")
    identities = tmp_path / "identities.toml"
    identities.write_text(IDENTITIES + '\n[[identity]]\nname = "x"\nrole = "root"\ncn = "x"\n')
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "keyturn_server",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            "--tls-dir",
            str(tmp_path / "tls"),
            "--client-ca",
            str(tmp_path / "tls" / "ca.crt"),
            "--client-identities",
            str(identities),
        ],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")},
            "MASTER_KEY": MASTER_KEY,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "identity 3 (x): role must be one of" in lines[0]
