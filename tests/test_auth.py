"""Authentication and authorization over real channels: tokens, roles, TLS and mTLS."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.domain import tokens
from tests.harness import Client, Harness, fails

SERVICES = {
    "KeyService": keys_pb2.DESCRIPTOR.services_by_name["KeyService"],
    "HandleService": handles_pb2.DESCRIPTOR.services_by_name["HandleService"],
    "AdminService": admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
}
MODULES = {"KeyService": keys_pb2, "HandleService": handles_pb2, "AdminService": admin_pb2}
ALL = {"admin", "operator", "service", "auditor"}
MANAGE = {"admin", "operator", "service"}

#: The role matrix as implemented: which roles may call each RPC.
ALLOWED: dict[str, set[str]] = {
    "KeyService/GenerateKey": MANAGE,
    "KeyService/GetKey": ALL,
    "KeyService/ListKeys": ALL,
    "KeyService/RotateKey": MANAGE,
    "KeyService/RemoveKey": MANAGE,
    "KeyService/RestoreKey": MANAGE,
    "KeyService/DisableKeyVersion": MANAGE,
    "KeyService/EnableKeyVersion": MANAGE,
    "KeyService/GetKeyStatistics": ALL,
    "KeyService/ExportKey": MANAGE,
    "KeyService/Encrypt": MANAGE,
    "KeyService/Decrypt": MANAGE,
    "KeyService/Sign": MANAGE,
    "KeyService/Verify": MANAGE,
    "KeyService/GetPublicKey": ALL,
    "KeyService/ComputeMac": MANAGE,
    "KeyService/VerifyMac": MANAGE,
    "KeyService/WatchExpiring": ALL,
    "HandleService/GenerateHandle": MANAGE,
    "HandleService/GetHandle": ALL,
    "HandleService/ListHandles": ALL,
    "HandleService/ValidateHandle": MANAGE,
    "HandleService/RotateHandle": MANAGE,
    "HandleService/RemoveHandle": MANAGE,
    "HandleService/GetHandleStatistics": ALL,
    "HandleService/WatchExpiring": ALL,
    "AdminService/GetHealth": ALL,
    "AdminService/GetConfig": ALL,
    "AdminService/UpdateConfig": {"admin"},
    "AdminService/ListAuditEvents": {"admin", "operator", "auditor"},
    "AdminService/VerifyAuditLog": {"admin", "operator", "auditor"},
    "AdminService/CreateAccessToken": {"admin"},
    "AdminService/ListAccessTokens": {"admin"},
    "AdminService/RevokeAccessToken": {"admin"},
}
RPCS = [(s, m.name) for s, d in SERVICES.items() for m in d.methods]


def test_the_matrix_names_every_rpc() -> None:
    assert {f"{s}/{m}" for s, m in RPCS} == set(ALLOWED)


async def call(client: Client, service: str, method: str, request: Any = None) -> grpc.StatusCode:
    """Invoke any RPC with an empty (or given) request; the status it ends with."""
    descriptor = SERVICES[service].methods_by_name[method]
    request_class = getattr(MODULES[service], descriptor.input_type.name, None)
    if request_class is None:  # shared request types live in events_pb2
        from keyturn.v1 import events_pb2

        request_class = getattr(events_pb2, descriptor.input_type.name)
    request = request or request_class()
    stub = {
        "KeyService": client.keys,
        "HandleService": client.handles,
        "AdminService": client.admin,
    }[service]
    try:
        if descriptor.server_streaming:
            stream = getattr(stub, method)(request, timeout=5)
            async for _ in stream:
                break
            stream.cancel()
        else:
            await getattr(stub, method)(request)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "method"), RPCS, ids=[f"{s}.{m}" for s, m in RPCS])
async def test_every_rpc_refuses_missing_and_wrong_tokens(
    server: Harness, service: str, method: str
) -> None:
    assert await call(server.client(None), service, method) == grpc.StatusCode.UNAUTHENTICATED
    # Well formed (checksum right) but unknown: this one reaches the store lookup.
    unknown = server.client(tokens.new_token(tokens.ACCESS_TOKEN_TYPE, 32))
    assert await call(unknown, service, method) == grpc.StatusCode.UNAUTHENTICATED
    wrong = server.client("kt_api-access_" + "0" * 43 + "AAAAAA")  # checksum wrong
    assert await call(wrong, service, method) == grpc.StatusCode.UNAUTHENTICATED
    garbage = server.client("not even a token")
    assert await call(garbage, service, method) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("role", sorted(ALL))
async def test_role_matrix(server: Harness, role: str) -> None:
    client = server.admin if role == "admin" else await server.client_for(role)
    denied = []
    for service, method in RPCS:
        code = await call(client, service, method)
        assert code != grpc.StatusCode.UNAUTHENTICATED
        allowed = role in ALLOWED[f"{service}/{method}"]
        if allowed == (code == grpc.StatusCode.PERMISSION_DENIED):
            denied.append((method, code.name))
    assert not denied, f"{role}: unexpected outcomes {denied}"


async def test_services_see_only_their_own_keys_and_handles(server: Harness) -> None:
    alice, bob = (
        await server.client_for("service", "alice"),
        await server.client_for("service", "bob"),
    )
    key = (await alice.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    handle = (
        await alice.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="api"))
    ).handle
    assert key.owner == "alice"
    for attempt in (
        bob.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id)),
        bob.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"x")),
        bob.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key.id)),
        bob.handles.GetHandle(handles_pb2.GetHandleRequest(handle_id=handle.id)),
        bob.handles.RemoveHandle(handles_pb2.RemoveHandleRequest(handle_id=handle.id)),
    ):
        assert (await fails(attempt)).code == grpc.StatusCode.NOT_FOUND
    listed = await bob.keys.ListKeys(keys_pb2.ListKeysRequest(owner="alice"))
    assert listed.total_size == 0  # the owner filter cannot widen a service's view
    operator = await server.client_for("operator")
    assert (await operator.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))).id == key.id
    auditor = await server.client_for("auditor")
    assert (await auditor.keys.ListKeys(keys_pb2.ListKeysRequest())).total_size == 1


async def test_a_service_asking_for_another_owner_is_not_answered_with_its_own(
    server: Harness,
) -> None:
    """``keyturn keys list --owner bob`` with alice's token printed alice's keys, as
    bob's: a script removing what it listed removed its own. A service sees nothing of
    another owner's, so the answer is empty, whoever that owner is (no oracle)."""
    await server.restart(heartbeat_interval=dt.timedelta(seconds=0.2))
    alice = await server.client_for("service", "alice")
    await server.client_for("service", "bob")
    key = (await alice.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    await alice.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="api"))
    for owner in ("bob", "nobody-at-all"):
        keys = await alice.keys.ListKeys(keys_pb2.ListKeysRequest(owner=owner))
        handles = await alice.handles.ListHandles(handles_pb2.ListHandlesRequest(owner=owner))
        assert (keys.total_size, list(keys.keys), keys.next_page_token) == (0, [], "")
        assert (handles.total_size, list(handles.handles)) == (0, [])
        stream = alice.keys.WatchExpiring(
            events_pb2.WatchExpiringRequest(owner=owner, resume_after=0)
        )
        first = await asyncio.wait_for(stream.read(), 5)
        assert first.kind == events_pb2.EVENT_KIND_HEARTBEAT  # not her key's creation
        stream.cancel()
    for owner in ("", "alice"):
        mine = await alice.keys.ListKeys(keys_pb2.ListKeysRequest(owner=owner))
        assert [k.id for k in mine.keys] == [key.id]


async def test_user_id_is_recorded_not_trusted(server: Harness) -> None:
    service = await server.client_for("service", "billing")
    key = (
        await service.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session", user_id="admin"))
    ).key
    assert key.owner == "billing" and key.created_for == "admin"
    denied = await fails(service.admin.UpdateConfig(admin_pb2.UpdateConfigRequest(user_id="admin")))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED


async def test_revoked_and_expired_access_tokens_stop_working(server: Harness) -> None:
    created = await server.admin.admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(
            name="temp", role=resources_pb2.ROLE_SERVICE, ttl={"seconds": 60}
        )
    )
    temp = server.client(created.token)
    assert (await temp.keys.ListKeys(keys_pb2.ListKeysRequest())).total_size == 0
    server.clock.advance(dt.timedelta(seconds=61))
    assert (
        await fails(temp.keys.ListKeys(keys_pb2.ListKeysRequest()))
    ).code == grpc.StatusCode.UNAUTHENTICATED

    other = await server.client_for("operator", "ops")
    await server.admin.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="ops"))
    assert (
        await fails(other.keys.ListKeys(keys_pb2.ListKeysRequest()))
    ).code == grpc.StatusCode.UNAUTHENTICATED
    listed = await server.admin.admin.ListAccessTokens(
        admin_pb2.ListAccessTokensRequest(include_revoked=True)
    )
    assert {t.name for t in listed.access_tokens} == {"admin", "temp", "ops"}
    assert created.token not in str(listed)


async def test_a_stolen_service_token_is_replaced_under_its_name_and_keeps_what_it_owns(
    server: Harness,
) -> None:
    """Keys and handles belong to the token's name. A stolen token is revoked; its
    successor was refused the name (ALREADY_EXISTS), so a new name was the only way back,
    and the service lost its own keys and handles (NOT_FOUND) to contain the theft."""
    stolen = await server.client_for("service", "billing")
    key = (await stolen.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    sealed = await stolen.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"x"))
    live = await server.client_for("service", "payroll")
    refused = await fails(
        server.admin.admin.CreateAccessToken(
            admin_pb2.CreateAccessTokenRequest(name="payroll", role=resources_pb2.ROLE_SERVICE)
        )
    )
    assert refused.code == grpc.StatusCode.ALREADY_EXISTS  # a live token is not replaced

    await server.admin.admin.RevokeAccessToken(
        admin_pb2.RevokeAccessTokenRequest(name="billing", reason="leaked")
    )
    replaced = await server.admin.admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(name="billing", role=resources_pb2.ROLE_SERVICE)
    )
    billing = server.client(replaced.token)
    opened = await billing.keys.Decrypt(
        keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
    )
    assert opened.plaintext == b"x"
    assert (
        await fails(stolen.keys.ListKeys(keys_pb2.ListKeysRequest()))
    ).code == grpc.StatusCode.UNAUTHENTICATED
    assert (await live.keys.ListKeys(keys_pb2.ListKeysRequest())).total_size == 0
    audited = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource_id="billing")
    )
    assert [(e.action, e.details.get("replaces_revoked", "")) for e in audited.events] == [
        ("token.create", ""),
        ("token.revoke", ""),
        ("token.create", "true"),
    ]


@pytest.mark.parametrize(
    "name",
    ["", "Billing", "-billing", "billing\n", "b" * 65],
    ids=["empty", "upper case", "leading dash", "trailing newline", "65 characters"],
)
async def test_access_token_names_outside_the_rule_are_refused(server: Harness, name: str) -> None:
    refused = await fails(
        server.admin.admin.CreateAccessToken(
            admin_pb2.CreateAccessTokenRequest(name=name, role=resources_pb2.ROLE_SERVICE)
        )
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in refused.violations, refused.violations
    listed = await server.admin.admin.ListAccessTokens(admin_pb2.ListAccessTokensRequest())
    assert {t.name for t in listed.access_tokens} == {"admin"}


@pytest.mark.parametrize("reserved", ["keyturn", "anonymous"])
async def test_no_token_can_take_the_name_the_server_audits_its_own_work_under(
    server: Harness, reserved: str
) -> None:
    refused = await fails(
        server.admin.admin.CreateAccessToken(
            admin_pb2.CreateAccessTokenRequest(name=reserved, role=resources_pb2.ROLE_ADMIN)
        )
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "reserved" in refused.violations["name"]
    await server.client_for("service", "keyturn-batch")  # a prefix is only a name
    listed = await server.admin.admin.ListAccessTokens(
        admin_pb2.ListAccessTokensRequest(include_revoked=True)
    )
    assert {t.name for t in listed.access_tokens} == {"admin", "keyturn-batch"}


async def test_per_caller_rate_limit_is_resource_exhausted_with_retry_info(
    server: Harness,
) -> None:
    await server.restart(caller_rate_limit=2.0, caller_burst=3)
    busy = await server.client_for("service", "busy")
    for _ in range(3):
        await busy.keys.ListKeys(keys_pb2.ListKeysRequest())
    limited = await fails(busy.keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.reason == "CALLER_RATE_LIMITED"
    assert limited.retry_after is not None and limited.retry_after.total_seconds() > 0
    assert (await server.admin.keys.ListKeys(keys_pb2.ListKeysRequest())).total_size == 0
    server.clock.advance(dt.timedelta(seconds=1))
    await busy.keys.ListKeys(keys_pb2.ListKeysRequest())


# --- TLS ---------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(
    subject: str,
    issuer_key: Any,
    issuer: str,
    key: Any,
    ca: bool,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("keyturn test ca", ca_key, "keyturn test ca", ca_key, True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _cert(
        "localhost", ca_key, "keyturn test ca", server_key, False, [x509.DNSName("localhost")]
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _cert(
        "payments",
        ca_key,
        "keyturn test ca",
        client_key,
        False,
        [x509.UniformResourceIdentifier("spiffe://example.org/payments")],
    )
    files = {
        "ca": _pem(ca),
        "server_cert": _pem(server_cert),
        "server_key": _key_pem(server_key),
        "client_cert": _pem(client_cert),
        "client_key": _key_pem(client_key),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(data)
    return {"files": files, "paths": paths}


def _secure(server: Harness, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    port = server.address.rsplit(":", 1)[1]
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


async def test_tls_with_a_bearer_token(server: Harness, pki: dict[str, Any]) -> None:
    paths = pki["paths"]
    await server.restart(tls_cert=paths["server_cert"], tls_key=paths["server_key"])
    async with _secure(server, grpc.ssl_channel_credentials(pki["files"]["ca"])) as channel:
        client = Client(channel, server.admin_token)
        health = await client.admin.GetHealth(admin_pb2.GetHealthRequest())
        assert health.health.status == admin_pb2.SERVING_STATUS_SERVING
    async with grpc.aio.insecure_channel(server.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError):
            await Client(plain, server.admin_token).keys.ListKeys(
                keys_pb2.ListKeysRequest(), timeout=2
            )


async def test_mutual_tls_makes_the_configured_principal_of_the_certificate_the_caller(
    server: Harness, pki: dict[str, Any]
) -> None:
    paths, files = pki["paths"], pki["files"]
    identities = paths["ca"].parent / "identities.toml"
    identities.write_text(
        '[[identity]]\nname = "payments"\nrole = "service"\nuri = "spiffe://example.org/payments"\n'
    )
    await server.restart(
        tls_cert=paths["server_cert"],
        tls_key=paths["server_key"],
        client_ca=paths["ca"],
        client_identities=identities,
    )
    credentials = grpc.ssl_channel_credentials(
        files["ca"], files["client_key"], files["client_cert"]
    )
    async with _secure(server, credentials) as channel:
        client = Client(channel, None)
        key = (await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
        assert key.owner == "payments"
        denied = await fails(client.admin.ListAccessTokens(admin_pb2.ListAccessTokensRequest()))
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED  # configured as a service
        # A bearer token over the same connection is the token's principal.
        admin = Client(channel, server.admin_token)
        listed = await admin.admin.ListAccessTokens(admin_pb2.ListAccessTokensRequest())
        assert "admin" in [t.name for t in listed.access_tokens]
    async with _secure(server, grpc.ssl_channel_credentials(files["ca"])) as no_cert:
        with pytest.raises(grpc.aio.AioRpcError):
            await Client(no_cert, server.admin_token).keys.ListKeys(
                keys_pb2.ListKeysRequest(), timeout=2
            )


async def test_insecure_no_auth_serves_loopback_without_tokens(server: Harness) -> None:
    await server.restart(insecure_no_auth=True)
    anonymous = server.client(None)
    key = (await anonymous.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))).key
    assert key.owner == "anonymous"


async def test_concurrent_callers_keep_their_own_identity(server: Harness) -> None:
    import asyncio

    callers = [await server.client_for("service", f"svc-{i}") for i in range(6)]
    keys = await asyncio.gather(
        *[
            callers[i % 6].keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
            for i in range(60)
        ]
    )
    assert [k.key.owner for k in keys] == [f"svc-{i % 6}" for i in range(60)]
