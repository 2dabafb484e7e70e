"""Disabling a compromised key version (DisableKeyVersion / EnableKeyVersion), over real
gRPC and HTTP: every use of a disabled version is refused until it is enabled again, the
primary cannot be disabled, a version past its max lifetime cannot change, the scheduler
still expires a disabled version, and each change is audited and streamed to watchers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest

from keyturn.v1 import admin_pb2, events_pb2, keys_pb2, resources_pb2
from tests.harness import Client, Harness, fails
from tests.http_support import HttpClient

K = keys_pb2
E = events_pb2
DISABLED = resources_pb2.KEY_VERSION_STATE_DISABLED
ENABLED = resources_pb2.KEY_VERSION_STATE_ENABLED


async def rotated_key(client: Client, type_name: str) -> resources_pb2.Key:
    """A key of ``type_name`` rotated once: version 1 is no longer primary."""
    key = (await client.keys.GenerateKey(K.GenerateKeyRequest(type=type_name))).key
    await client.keys.RotateKey(K.RotateKeyRequest(key_id=key.id, reason="drill"))
    return key


def disable(client: Client, key_id: str, version: int = 1, reason: str = "leaked") -> Any:
    return client.keys.DisableKeyVersion(
        K.DisableKeyVersionRequest(key_id=key_id, version=version, reason=reason, user_id="oncall")
    )


def enable(client: Client, key_id: str, version: int = 1) -> Any:
    return client.keys.EnableKeyVersion(
        K.EnableKeyVersionRequest(key_id=key_id, version=version, reason="false alarm")
    )


def state_of(key: resources_pb2.Key, version: int) -> int:
    (found,) = [v.state for v in key.versions if v.version == version]
    return found


# --- every use of the version, made before it was disabled ------------------------------

#: key type -> (make something with version 1, use it): the use must be refused.
Use = Callable[[Client, str], Awaitable[Callable[[], Awaitable[Any]]]]


async def _decrypt(client: Client, key_id: str) -> Callable[[], Awaitable[Any]]:
    sealed = await client.keys.Encrypt(K.EncryptRequest(key_id=key_id, plaintext=b"pin"))
    return lambda: client.keys.Decrypt(
        K.DecryptRequest(key_id=key_id, ciphertext=sealed.ciphertext)
    )


async def _verify(client: Client, key_id: str) -> Callable[[], Awaitable[Any]]:
    signed = await client.keys.Sign(K.SignRequest(key_id=key_id, data=b"invoice"))
    return lambda: client.keys.Verify(
        K.VerifyRequest(key_id=key_id, data=b"invoice", signature=signed.signature)
    )


async def _public_key(client: Client, key_id: str) -> Callable[[], Awaitable[Any]]:
    return lambda: client.keys.GetPublicKey(K.GetPublicKeyRequest(key_id=key_id, version=1))


async def _verify_mac(client: Client, key_id: str) -> Callable[[], Awaitable[Any]]:
    mac = await client.keys.ComputeMac(K.ComputeMacRequest(key_id=key_id, data=b"cookie"))
    return lambda: client.keys.VerifyMac(
        K.VerifyMacRequest(key_id=key_id, data=b"cookie", mac=mac.mac)
    )


async def _export(client: Client, key_id: str) -> Callable[[], Awaitable[Any]]:
    return lambda: client.keys.ExportKey(
        K.ExportKeyRequest(key_id=key_id, version=1, reason="backup")
    )


USES: dict[str, tuple[str, Use]] = {
    "decrypt": ("encryption", _decrypt),
    "verify": ("signing", _verify),
    "public-key": ("signing", _public_key),
    "verify-mac": ("session", _verify_mac),
    "export": ("session", _export),
}


@pytest.mark.parametrize(("type_name", "use"), USES.values(), ids=USES.keys())
async def test_a_disabled_version_refuses_every_use_until_it_is_enabled_again(
    server: Harness, type_name: str, use: Use
) -> None:
    key = (await server.admin.keys.GenerateKey(K.GenerateKeyRequest(type=type_name))).key
    again = await use(server.admin, key.id)  # made with version 1, the primary then
    await again()
    await server.admin.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))

    disabled = await disable(server.admin, key.id)
    assert state_of(disabled, 1) == DISABLED and state_of(disabled, 2) == ENABLED
    got = await server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert state_of(got, 1) == DISABLED and got.status == resources_pb2.KEY_STATUS_ACTIVE
    refused = await fails(again())
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "VERSION_DISABLED" and refused.metadata == {"version": "1"}
    assert "disabled" in refused.message

    enabled = await enable(server.admin, key.id)
    assert state_of(enabled, 1) == ENABLED
    await again()


async def test_the_primary_and_the_rest_of_the_key_keep_working(server: Harness) -> None:
    key = await rotated_key(server.admin, "encryption")
    await disable(server.admin, key.id)
    sealed = await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"new"))
    assert sealed.key_version == 2
    opened = await server.admin.keys.Decrypt(
        K.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
    )
    assert opened.plaintext == b"new" and opened.used_primary


async def test_the_primary_cannot_be_disabled_rotate_first(server: Harness) -> None:
    key = (await server.admin.keys.GenerateKey(K.GenerateKeyRequest(type="signing"))).key
    refused = await fails(disable(server.admin, key.id, version=1))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "VERSION_IS_PRIMARY" and "rotate" in refused.message
    await server.admin.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    assert state_of(await disable(server.admin, key.id, version=1), 1) == DISABLED


@pytest.mark.parametrize(
    ("version", "code", "reason"),
    [
        (0, grpc.StatusCode.INVALID_ARGUMENT, ""),
        (9, grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND"),
    ],
    ids=["no-version", "unknown-version"],
)
async def test_a_version_must_be_named_and_exist(
    server: Harness, version: int, code: grpc.StatusCode, reason: str
) -> None:
    key = await rotated_key(server.admin, "encryption")
    for call in (disable(server.admin, key.id, version), enable(server.admin, key.id, version)):
        refused = await fails(call)
        assert refused.code == code
        if reason:
            assert refused.reason == reason
        else:
            assert "version" in refused.violations


async def test_a_repeat_finds_it_done_and_journals_nothing_more(server: Harness) -> None:
    """DisableKeyVersion and EnableKeyVersion are IDEMPOTENT: a client retries them."""
    key = await rotated_key(server.admin, "encryption")
    first = await disable(server.admin, key.id)
    assert await disable(server.admin, key.id) == first
    await enable(server.admin, key.id)
    await enable(server.admin, key.id)
    kinds = [e.kind.value for e in await server.events() if e.subject_id == key.id]
    assert kinds == ["CREATED", "ROTATED", "VERSION_DISABLED", "VERSION_ENABLED"]


async def test_a_disabled_version_still_expires_and_then_cannot_be_enabled(
    server: Harness,
) -> None:
    key = await rotated_key(server.admin, "session")  # max lifetime 7 d
    await disable(server.admin, key.id)
    assert await server.sealed_material(key.id, 1) is not None  # kept while disabled
    await server.advance(timedelta(days=7))
    got = await server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert state_of(got, 1) == resources_pb2.KEY_VERSION_STATE_EXPIRED
    assert await server.sealed_material(key.id, 1) is None  # destroyed on time
    for call in (enable(server.admin, key.id), disable(server.admin, key.id)):
        refused = await fails(call)
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.reason == "VERSION_EXPIRED"


async def test_a_removed_key_s_versions_change_until_it_is_destroyed(server: Harness) -> None:
    key = await rotated_key(server.admin, "encryption")
    await server.admin.keys.RemoveKey(K.RemoveKeyRequest(key_id=key.id))
    await disable(server.admin, key.id)  # while destruction is pending: allowed
    assert await server.sealed_material(key.id, 1) is not None
    await server.advance(timedelta(days=31))
    refused = await fails(enable(server.admin, key.id))
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "KEY_DESTROYED"


async def test_the_owner_operators_and_admins_may_disable_others_see_nothing(
    server: Harness,
) -> None:
    owner = await server.client_for("service", "payments")
    key = await rotated_key(owner, "encryption")
    assert state_of(await disable(owner, key.id), 1) == DISABLED
    operator = await server.client_for("operator", "oncall")
    assert state_of(await enable(operator, key.id), 1) == ENABLED
    other = await server.client_for("service", "intruder")
    hidden = await fails(disable(other, key.id))
    assert hidden.code == grpc.StatusCode.NOT_FOUND and hidden.reason == "KEY_NOT_FOUND"
    auditor = await server.client_for("auditor", "reader")
    assert (await fails(disable(auditor, key.id))).code == grpc.StatusCode.PERMISSION_DENIED


async def test_the_change_is_audited_with_its_actor_and_reason(server: Harness) -> None:
    operator = await server.client_for("operator", "oncall")
    key = await rotated_key(server.admin, "signing")
    await disable(operator, key.id, reason="INC-7 signing key leaked")
    await enable(operator, key.id)
    found = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(resource_id=key.id, page_size=50)
    )
    entries = {e.action: e for e in found.events}
    disabled = entries["key.version.disable"]
    assert disabled.principal == "oncall" and disabled.user_id == "oncall"
    assert disabled.reason == "INC-7 signing key leaked"
    assert dict(disabled.details) == {"version": "1"}
    assert entries["key.version.enable"].reason == "false alarm"
    assert (await server.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())).valid


async def test_watchers_see_the_version_disabled_and_enabled(server: Harness) -> None:
    key = await rotated_key(server.admin, "encryption")
    stream = server.admin.keys.WatchExpiring(
        E.WatchExpiringRequest(kinds=[E.EVENT_KIND_VERSION_DISABLED, E.EVENT_KIND_VERSION_ENABLED])
    )
    await disable(server.admin, key.id, reason="leaked")
    await enable(server.admin, key.id)
    seen: list[E.ExpiryEvent] = []

    async def read() -> None:
        while len(seen) < 2:
            event = await stream.read()
            assert event is not grpc.aio.EOF
            if event.kind in (E.EVENT_KIND_VERSION_DISABLED, E.EVENT_KIND_VERSION_ENABLED):
                seen.append(event)

    await asyncio.wait_for(read(), 10)
    stream.cancel()
    first, second = seen
    assert first.kind == E.EVENT_KIND_VERSION_DISABLED and first.key_version == 1
    assert first.reason == "leaked" and state_of(first.key, 1) == DISABLED
    (v1,) = [v for v in first.key.versions if v.version == 1]
    assert first.deadline == v1.expire_time  # when its material goes, disabled or not
    assert second.kind == E.EVENT_KIND_VERSION_ENABLED and state_of(second.key, 1) == ENABLED


async def test_over_http_the_version_is_disabled_and_its_use_refused(server: Harness) -> None:
    http = HttpClient(server.http_url, server.admin_token)
    key = await rotated_key(server.admin, "session")
    path = f"/v1/keys/{key.id}/versions/1"
    answer = await http.post(f"{path}:disable", {"reason": "leaked"})
    assert answer.status == 200, answer.text
    assert answer.body["versions"][0]["state"] == "KEY_VERSION_STATE_DISABLED"
    refused = await http.post(f"/v1/keys/{key.id}:export", {"version": 1})
    assert refused.status == 400 and refused.error["status"] == "FAILED_PRECONDITION"
    assert refused.reason == "VERSION_DISABLED"
    primary = await http.post(f"/v1/keys/{key.id}/versions/2:disable", {})
    assert primary.status == 400 and primary.reason == "VERSION_IS_PRIMARY"
    answer = await http.post(f"{path}:enable", {})
    assert answer.status == 200, answer.text
    assert answer.body["versions"][0]["state"] == "KEY_VERSION_STATE_ENABLED"
    assert (await http.post(f"/v1/keys/{key.id}:export", {"version": 1})).status == 200
