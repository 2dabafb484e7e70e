"""Containing a compromised key version: what an operator disables stays disabled.

A version disabled by an operator (or an admin) is an incident's containment: the key's
owner may not enable it again, so a thief holding the owner's token cannot undo it. A
version disabled by its owner may be enabled by its owner or an operator. And what was
disabled stays unusable once it reaches its max lifetime: EXPIRED after DISABLED serves no
public key, verifies nothing and exports nothing, over gRPC and HTTP.

Who holds a version is stored with a MAC of its own, so that a replica of the previous
release, still running during a rolling upgrade, authenticates the row and refuses the
version; each refused use is a security log line naming the key and the caller, and an
owner's attempt to lift an operator's hold is audited.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import grpc
import pytest

from keyturn.v1 import admin_pb2, keys_pb2, resources_pb2
from keyturn_server.store.integrity import VERSION_COLUMNS, columns_of
from tests.harness import Client, Harness, fails
from tests.http_support import HttpClient
from tests.security.database import query, tamper
from tests.test_key_versions import USES, Use, disable, enable, rotated_key, state_of

K = keys_pb2
DISABLED = resources_pb2.KEY_VERSION_STATE_DISABLED
ENABLED = resources_pb2.KEY_VERSION_STATE_ENABLED
EXPIRED = resources_pb2.KEY_VERSION_STATE_EXPIRED


async def token_for(server: Harness, role: str, name: str) -> str:
    created = await server.admin.admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(
            name=name, role=resources_pb2.Role.Value(f"ROLE_{role.upper()}")
        )
    )
    return str(created.token)


async def owned_key(server: Harness, type_name: str = "encryption") -> tuple[Client, str]:
    owner = await server.client_for("service", "payments")
    return owner, (await rotated_key(owner, type_name)).id


@pytest.mark.parametrize("role", ["operator", "admin"])
async def test_the_owner_cannot_enable_a_version_an_operator_disabled(
    server: Harness, role: str
) -> None:
    owner, key_id = await owned_key(server)
    contained_by = await server.client_for(role, "oncall")
    await disable(contained_by, key_id, reason="INC-9 token of payments stolen")

    refused = await fails(enable(owner, key_id))
    assert refused.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.reason == "VERSION_DISABLED_BY_OPERATOR"
    assert refused.metadata == {"version": "1"}
    assert "operator" in refused.message
    got = await owner.keys.GetKey(K.GetKeyRequest(key_id=key_id))
    assert state_of(got, 1) == DISABLED

    operator = await server.client_for("operator", "second-oncall")
    assert state_of(await enable(operator, key_id), 1) == ENABLED


async def test_the_owner_s_refused_attempt_to_lift_the_hold_is_audited(server: Harness) -> None:
    """The attempt is evidence (the owner's token may be the thief's): one audit entry,
    outcome denied, with the caller, its reason and the version."""
    owner, key_id = await owned_key(server)
    await disable(await server.client_for("operator", "oncall"), key_id)
    await fails(
        owner.keys.EnableKeyVersion(
            K.EnableKeyVersionRequest(key_id=key_id, version=1, reason="fixed", user_id="mallory")
        )
    )
    found = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource_id=key_id, page_size=50)
    )
    (denied,) = [e for e in found.events if e.action == "key.version.enable"]
    assert denied.outcome == "denied" and denied.principal == "payments"
    assert denied.user_id == "mallory" and denied.reason == "fixed"
    assert dict(denied.details) == {"version": "1", "held_by": "OPERATOR"}
    assert (await server.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())).valid


async def test_an_operator_s_disable_of_a_version_its_owner_disabled_takes_it_over(
    server: Harness,
) -> None:
    """A thief with the owner's token disables first: the operator's disable must not
    be a no-op that leaves the owner (the thief) able to enable it again."""
    owner, key_id = await owned_key(server)
    await disable(owner, key_id, reason="owner")
    operator = await server.client_for("operator", "oncall")
    await disable(operator, key_id, reason="INC-9")
    refused = await fails(enable(owner, key_id))
    assert refused.reason == "VERSION_DISABLED_BY_OPERATOR"


async def test_the_owner_may_enable_what_it_disabled_itself(server: Harness) -> None:
    owner, key_id = await owned_key(server)
    await disable(owner, key_id)
    assert state_of(await enable(owner, key_id), 1) == ENABLED
    # And an owner's repeat of an operator's disable changes nothing of who holds it.
    operator = await server.client_for("operator", "oncall")
    await disable(operator, key_id)
    await disable(owner, key_id)
    assert (await fails(enable(owner, key_id))).reason == "VERSION_DISABLED_BY_OPERATOR"


async def test_who_holds_the_version_survives_a_restart(server: Harness) -> None:
    owner_token = await token_for(server, "service", "payments")
    key_id = (await rotated_key(server.client(owner_token), "encryption")).id
    operator = await server.client_for("operator", "oncall")
    await disable(operator, key_id)
    await server.restart()
    owner = server.client(owner_token)
    assert (await fails(enable(owner, key_id))).reason == "VERSION_DISABLED_BY_OPERATOR"


async def test_over_http_the_owner_is_refused_with_the_reason(server: Harness) -> None:
    owner_token = await token_for(server, "service", "payments")
    key_id = (await rotated_key(server.client(owner_token), "encryption")).id
    operator = await server.client_for("operator", "oncall")
    await disable(operator, key_id)
    http = HttpClient(server.http_url, owner_token)
    refused = await http.post(f"/v1/keys/{key_id}/versions/1:enable", {})
    assert refused.status == 403 and refused.reason == "VERSION_DISABLED_BY_OPERATOR"


async def test_a_database_edit_that_forges_the_owner_as_holder_is_tampering(
    server: Harness,
) -> None:
    """Who holds the version carries a MAC of its own: naming the owner in the file, to
    let the owner's token enable the version, makes the key read as tampered."""
    owner_token = await token_for(server, "service", "payments")
    key_id = (await rotated_key(server.client(owner_token), "encryption")).id
    await disable(await server.client_for("operator", "oncall"), key_id)
    await tamper(
        server,
        ("UPDATE key_versions SET disabled_by = 'OWNER' WHERE key_id = ?", (key_id,)),
    )
    refused = await fails(enable(server.client(owner_token), key_id))
    assert refused.code == grpc.StatusCode.DATA_LOSS


async def test_a_disabled_version_with_no_holder_recorded_is_the_operators(
    server: Harness,
) -> None:
    """Disabled before schema 6 recorded by whom (or the holder cleared in the file):
    fail closed, only an operator enables it."""
    owner_token = await token_for(server, "service", "payments")
    key_id = (await rotated_key(server.client(owner_token), "encryption")).id
    await disable(server.client(owner_token), key_id)
    cleared = "UPDATE key_versions SET disabled_by = NULL, disabled_by_mac = NULL WHERE key_id = ?"
    await tamper(server, (cleared, (key_id,)))
    refused = await fails(enable(server.client(owner_token), key_id))
    assert refused.reason == "VERSION_DISABLED_BY_OPERATOR"
    operator = await server.client_for("operator", "oncall")
    assert state_of(await enable(operator, key_id), 1) == ENABLED


async def test_an_older_replica_still_authenticates_a_disabled_version_and_refuses_it(
    server: Harness,
) -> None:
    """A replica of schema 5, still running during a rolling upgrade, checks a version's
    row MAC over VERSION_COLUMNS and knows DISABLED: the row must pass that check, so it
    refuses the version (VERSION_DISABLED) instead of reporting every disabled version
    as tampered (DATA_LOSS, "restore from a backup") in the middle of the incident.
    (Checked by hand against that release's code on PostgreSQL; a replica of schema 4,
    which does not know DISABLED, refuses the whole key and serves nothing of it.)"""
    key = await rotated_key(server.admin, "signing")
    await disable(await server.client_for("operator", "oncall"), key.id)
    (row,) = query(server, "SELECT * FROM key_versions WHERE key_id = ? AND version = 1", (key.id,))
    assert row["state"] == "DISABLED" and row["disabled_by"] == "OPERATOR"
    assert server.app is not None
    as_schema_5 = columns_of(row, VERSION_COLUMNS)
    assert server.app.store.integrity.intact("key_versions", as_schema_5, row["mac"], "v1")


async def test_a_version_an_older_replica_enabled_is_enabled_whatever_holder_it_left(
    server: Harness,
) -> None:
    """A schema-5 replica, in the seconds before it notices the upgrade and stops
    writing, may enable a version: it rewrites the columns it knows (state, its MAC) and
    leaves the holder behind. The version is enabled: its public key is served and its
    uses log no refusal (before, the stale holder withheld the public key of an enabled
    version)."""
    key = await rotated_key(server.admin, "signing")
    await disable(await server.client_for("operator", "oncall"), key.id)
    (row,) = query(server, "SELECT * FROM key_versions WHERE key_id = ? AND version = 1", (key.id,))
    row["state"] = "ENABLED"
    assert server.app is not None
    mac = server.app.store.integrity.tag("key_versions", columns_of(row, VERSION_COLUMNS))
    as_schema_5 = (
        "UPDATE key_versions SET state = 'ENABLED', mac = ? WHERE key_id = ? AND version = 1"
    )
    await tamper(server, (as_schema_5, (mac, key.id)))
    got = await server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert state_of(got, 1) == ENABLED
    await server.admin.keys.GetPublicKey(K.GetPublicKeyRequest(key_id=key.id, version=1))


# --- EXPIRED after DISABLED -------------------------------------------------------------


@pytest.mark.parametrize(("type_name", "use"), USES.values(), ids=USES.keys())
async def test_a_version_that_expires_while_disabled_stays_unusable(
    server: Harness, type_name: str, use: Use
) -> None:
    key = (await server.admin.keys.GenerateKey(K.GenerateKeyRequest(type=type_name))).key
    again = await use(server.admin, key.id)
    await server.admin.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    await disable(server.admin, key.id)
    lifetime = {"encryption": 90, "signing": 365, "session": 7}[type_name]
    await server.advance(timedelta(days=lifetime))
    got = await server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert state_of(got, 1) == EXPIRED
    refused = await fails(again())
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason in ("VERSION_DISABLED", "VERSION_EXPIRED"), refused


async def test_no_public_key_of_a_version_that_expired_while_disabled_on_any_route(
    server: Harness,
) -> None:
    key = await rotated_key(server.admin, "signing")
    await disable(server.admin, key.id)
    await server.advance(timedelta(days=365))
    refused = await fails(
        server.admin.keys.GetPublicKey(K.GetPublicKeyRequest(key_id=key.id, version=1))
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "VERSION_DISABLED" and "expired" in refused.message
    http = HttpClient(server.http_url, server.admin_token)
    answer = await http.get(f"/v1/keys/{key.id}/publicKey?version=1")
    assert answer.status == 400 and answer.reason == "VERSION_DISABLED", answer.text


async def test_an_expired_version_never_disabled_still_shows_its_public_key(
    server: Harness,
) -> None:
    """Unchanged: relying parties may still check old signatures' public keys."""
    key = await rotated_key(server.admin, "signing")
    await server.advance(timedelta(days=365))
    got = await server.admin.keys.GetPublicKey(K.GetPublicKeyRequest(key_id=key.id, version=1))
    assert got.pem.startswith("-----BEGIN PUBLIC KEY-----")


# --- who still asks for a contained version ---------------------------------------------


@pytest.mark.parametrize(("type_name", "use"), USES.values(), ids=USES.keys())
async def test_each_refused_use_of_a_disabled_version_says_which_key_and_who_asked(
    server: Harness, type_name: str, use: Use, caplog: pytest.LogCaptureFixture
) -> None:
    """Incident work asks who still uses the version it contained. The access log line of
    a refused call names the method and the caller, not the key or why; now each refusal
    is a security line (never summarised) with the key, the version, the operation, the
    caller and its peer. Only refusals: successful uses cost nothing more."""
    caller = await server.client_for("service", "payments")
    key = (await caller.keys.GenerateKey(K.GenerateKeyRequest(type=type_name))).key
    again = await use(caller, key.id)
    await caller.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    await disable(await server.client_for("operator", "oncall"), key.id)
    with caplog.at_level(logging.INFO, logger="keyturn.security"):
        await fails(again())
    (line,) = [r for r in caplog.records if r.getMessage().startswith("a disabled key version")]
    assert line.__dict__["category"] == "security"
    assert line.__dict__["resource"] == f"key/{key.id}" and line.__dict__["version"] == 1
    assert line.__dict__["principal"] == "payments" and line.__dict__["peer"]
    assert line.__dict__["operation"] in ("decrypt", "verify", "public_key", "verify_mac", "export")
