"""A database-file writer without MASTER_KEY forges the rows that grant rights: raises a
token's role, moves a key or a handle to another owner, un-revokes a handle, resets its
usage, extends its expiry, points a secret at someone else's handle, re-enables a
destroyed or a disabled key version, weakens the policies, or redirects a rotated secret's delivery.
Each forged row fails its MAC: refused (DATA_LOSS) or treated as absent, counted, and
logged as a security event that names no secret."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from typing import Any

import grpc
import pytest

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.crypto.keyring import KeyringData
from keyturn_server.crypto.master import parse_master_key
from keyturn_server.domain.errors import DataLoss
from keyturn_server.domain.events import EventKind
from tests.harness import MASTER_KEY, Harness, fails
from tests.security.database import query, run_sql, tamper

SERVICE = resources_pb2.ROLE_SERVICE
DAY = timedelta(days=1)


async def _service(server: Harness, name: str) -> str:
    created = await server.admin.admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(name=name, role=SERVICE)
    )
    return created.token


async def _add_handle_type(server: Harness, name: str, **fields: Any) -> None:
    config = await server.admin.admin.GetConfig(admin_pb2.GetConfigRequest())
    await server.admin.admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(handle_types={name: admin_pb2.HandleTypeConfig(**fields)}),
            update_mask={"paths": [f"handle_types.{name}"]},
            etag=config.etag,
        )
    )


async def _integrity_failures(server: Harness) -> int:
    health = await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="keys"))
    return int(
        next(c for c in health.health.components if c.name == "keys").keys.integrity_failures
    )


def _micros(hours: float) -> int:
    return int(hours * 3600 * 1_000_000)


async def test_a_service_token_raised_to_admin_authenticates_nobody(
    server: Harness, logs_hold_no_secrets: io.StringIO
) -> None:
    token = await _service(server, "billing")
    await tamper(server, ("UPDATE access_tokens SET role = 'ADMIN' WHERE name = ?", ("billing",)))

    forged = await fails(
        server.client(token).admin.ListAccessTokens(admin_pb2.ListAccessTokensRequest())
    )
    assert forged.code == grpc.StatusCode.UNAUTHENTICATED
    listed = await server.admin.admin.ListAccessTokens(admin_pb2.ListAccessTokensRequest())
    assert "billing" not in [t.name for t in listed.access_tokens]  # a forged row lists as absent
    assert await _integrity_failures(server) >= 1
    lines = [json.loads(line) for line in logs_hold_no_secrets.getvalue().splitlines()]
    assert any(
        line.get("category") == "security"
        and line.get("table") == "access_tokens"
        and line.get("record") == "billing"
        for line in lines
    )


async def test_a_key_moved_to_another_owner_is_data_loss_for_everyone(server: Harness) -> None:
    victim = server.client(await _service(server, "victim"))
    thief_token = await _service(server, "thief")
    key = (await victim.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    await tamper(server, ("UPDATE keys SET owner = 'thief' WHERE id = ?", (key.id,)))

    thief = server.client(thief_token)
    used = await fails(thief.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"x")))
    assert used.code == grpc.StatusCode.DATA_LOSS and used.reason == "RECORD_TAMPERED"
    listed = await thief.keys.ListKeys(keys_pb2.ListKeysRequest())
    assert [k.id for k in listed.keys] == []
    read = await fails(server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id)))
    assert read.code == grpc.StatusCode.DATA_LOSS


async def test_a_handle_moved_to_another_owner_cannot_be_revoked_by_the_thief(
    server: Harness,
) -> None:
    victim = server.client(await _service(server, "victim"))
    thief_token = await _service(server, "thief")
    issued = await victim.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
    await tamper(server, ("UPDATE handles SET owner = 'thief' WHERE id = ?", (issued.handle.id,)))

    removed = await fails(
        server.client(thief_token).handles.RemoveHandle(
            handles_pb2.RemoveHandleRequest(handle_id=issued.handle.id)
        )
    )
    assert removed.code == grpc.StatusCode.DATA_LOSS


async def test_an_unrevoked_handle_stays_invalid(server: Harness) -> None:
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    await server.admin.handles.RemoveHandle(
        handles_pb2.RemoveHandleRequest(handle_id=issued.handle.id, reason="leaked")
    )
    await tamper(
        server,
        (
            "UPDATE handles SET state = 'ACTIVE', revoke_reason = NULL WHERE id = ?",
            (issued.handle.id,),
        ),
    )
    check = await server.admin.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=issued.token)
    )
    assert not check.validation.valid


async def test_a_reset_usage_count_does_not_revive_an_exhausted_handle(server: Harness) -> None:
    await _add_handle_type(
        server,
        "twice",
        algorithm="sha256",
        handle_length=32,
        rotation_interval={"seconds": 3600},
        warning_threshold={"seconds": 60},
        max_lifetime={"seconds": 3600},
        max_usage=2,
    )
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="twice")
    )
    request = handles_pb2.ValidateHandleRequest(token=issued.token)
    uses = [(await server.admin.handles.ValidateHandle(request)).validation for _ in range(3)]
    assert [u.valid for u in uses] == [True, True, False]
    await tamper(
        server,
        (
            "UPDATE handles SET usage_count = 0, state = 'ACTIVE' WHERE id = ?",
            (issued.handle.id,),
        ),
    )
    assert not (await server.admin.handles.ValidateHandle(request)).validation.valid


async def test_an_extended_expiry_does_not_revive_an_expired_handle(server: Harness) -> None:
    await _add_handle_type(
        server,
        "brief",
        algorithm="sha256",
        handle_length=32,
        rotation_interval={"seconds": 60},
        warning_threshold={"seconds": 10},
        max_lifetime={"seconds": 60},
        max_usage=10,
    )
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="brief")
    )
    await server.advance(timedelta(seconds=61))
    request = handles_pb2.ValidateHandleRequest(token=issued.token)
    assert not (await server.admin.handles.ValidateHandle(request)).validation.valid
    await tamper(
        server,
        (
            "UPDATE handles SET state = 'ACTIVE', expire_time = expire_time + ?, "
            "rotate_time = rotate_time + ? WHERE id = ?",
            (_micros(24), _micros(24), issued.handle.id),
        ),
    )
    assert not (await server.admin.handles.ValidateHandle(request)).validation.valid


async def test_a_secret_pointed_at_another_handle_does_not_take_it_over(server: Harness) -> None:
    victim = server.client(await _service(server, "victim"))
    thief = server.client(await _service(server, "thief"))
    theirs = await victim.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
    mine = await thief.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
    thief_token = thief.token
    await tamper(
        server,
        (
            "UPDATE handle_secrets SET handle_id = ? WHERE handle_id = ?",
            (theirs.handle.id, mine.handle.id),
        ),
    )
    check = await server.client(thief_token).handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=mine.token)
    )
    assert not check.validation.valid
    assert check.validation.handle_id == ""


async def test_a_destroyed_key_version_cannot_be_re_enabled(server: Harness) -> None:
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    sealed = await server.admin.keys.Encrypt(
        keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"payroll")
    )
    await server.stop()
    saved = run_sql(
        server,
        "SELECT material FROM key_versions WHERE key_id = ? AND version = 1",
        (key.id,),
    )[0]["material"]
    await server.start()
    await server.advance(91 * DAY)  # rotated, and version 1 reached its max lifetime
    gone = await fails(
        server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
        )
    )
    assert gone.code == grpc.StatusCode.FAILED_PRECONDITION
    await tamper(
        server,
        (
            "UPDATE key_versions SET state = 'ENABLED', expire_time = expire_time + ?, "
            "destroy_time = NULL, material = ? WHERE key_id = ? AND version = 1",
            (_micros(24 * 365), saved, key.id),
        ),
    )
    revived = await fails(
        server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
        )
    )
    assert revived.code == grpc.StatusCode.DATA_LOSS


async def test_a_disabled_key_version_cannot_be_enabled_in_the_file(server: Harness) -> None:
    """The on-call disabled a leaked version; the file's writer flips it back."""
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    mac = await server.admin.keys.ComputeMac(keys_pb2.ComputeMacRequest(key_id=key.id, data=b"m"))
    await server.admin.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key.id))
    await server.admin.keys.DisableKeyVersion(
        keys_pb2.DisableKeyVersionRequest(key_id=key.id, version=1, reason="leaked")
    )
    await tamper(
        server,
        (
            "UPDATE key_versions SET state = 'ENABLED' WHERE key_id = ? AND version = 1",
            (key.id,),
        ),
    )
    check = keys_pb2.VerifyMacRequest(key_id=key.id, data=b"m", mac=mac.mac)
    assert (await fails(server.admin.keys.VerifyMac(check))).code == grpc.StatusCode.DATA_LOSS


async def test_weakened_policies_stop_the_start(server: Harness) -> None:
    await server.stop()
    run_sql(
        server,
        "UPDATE config SET body = REPLACE(body, '\"prevent_reuse\": true', "
        "'\"prevent_reuse\": false') WHERE revision = (SELECT MAX(revision) FROM config)",
    )
    with pytest.raises(DataLoss, match="config"):
        await server.start()


async def test_a_rotated_secret_is_not_delivered_to_whoever_rewrites_the_event(
    server: Harness,
) -> None:
    await _add_handle_type(
        server,
        "blink",
        algorithm="sha256",
        handle_length=32,
        rotation_interval={"seconds": 6},
        warning_threshold={"seconds": 2},
        max_lifetime={"seconds": 60},
        max_usage=10,
    )
    victim = server.client(await _service(server, "victim"))
    thief_token = await _service(server, "thief")
    issued = await victim.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="blink"))
    await server.advance(timedelta(seconds=6))  # rotated: the event carries the new secret
    await server.stop()
    run_sql(
        server,
        "UPDATE events SET owner = 'thief' WHERE subject_id = ? AND kind = 'ROTATED'",
        (issued.handle.id,),
    )
    await server.start(heartbeat_interval=timedelta(seconds=0.2))
    thief = server.client(thief_token)
    stream = thief.handles.WatchExpiring(
        events_pb2.WatchExpiringRequest(deliver_tokens=True, resume_after=0), timeout=10
    )
    delivered: list[str] = []
    async for event in stream:
        if event.kind == events_pb2.EVENT_KIND_HEARTBEAT:
            break
        delivered.append(event.token)
    stream.cancel()
    assert not any(delivered)


_MACS = ("keys", "key_versions", "handles", "handle_secrets", "access_tokens", "config", "events")


def _as_schema_1(server: Harness) -> None:
    """Make the stopped server's data look as a server before row MACs left it."""
    for table in _MACS:
        run_sql(server, f"ALTER TABLE {table} DROP COLUMN mac")
    run_sql(server, "ALTER TABLE key_versions DROP COLUMN nonces_reserved")
    run_sql(server, "DROP TABLE key_owners")  # schema 3
    run_sql(server, "DROP INDEX handles_ended")  # schema 4
    run_sql(server, "ALTER TABLE key_versions DROP COLUMN disabled_by")  # schema 6
    run_sql(server, "ALTER TABLE key_versions DROP COLUMN disabled_by_mac")
    if server.settings.store:
        run_sql(server, "DELETE FROM keyturn_schema WHERE version > 1")
    else:
        run_sql(server, "PRAGMA user_version = 1")
    name = run_sql(server, "SELECT name FROM meta WHERE name LIKE 'keyring.wrap.%'")[0]["name"]
    wrapped = run_sql(server, "SELECT value FROM meta WHERE name = ?", (name,))[0]["value"]
    master = parse_master_key(MASTER_KEY, None)
    data = KeyringData.unwrap(bytes(wrapped), master)
    data.integrity = 0
    run_sql(server, "UPDATE meta SET value = ? WHERE name = ?", (data.wrap(master), name))
    head = run_sql(server, "SELECT value FROM meta WHERE name = 'audit_head'")[0]["value"]
    old_head = ":".join(bytes(head).decode().split(":")[:2]).encode()
    run_sql(server, "UPDATE meta SET value = ? WHERE name = 'audit_head'", (old_head,))


async def test_rows_written_before_row_macs_get_theirs_once(server: Harness) -> None:
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    await server.stop()
    _as_schema_1(server)
    await server.start()  # the upgrade: schema 2, and every row tagged

    await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"x"))
    check = await server.admin.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=issued.token)
    )
    assert check.validation.valid
    verified = await server.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())
    assert verified.valid
    protected = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="store.protect")
    )
    assert len(protected.events) == 1

    # Clearing a MAC does not get a forged row tagged again: the keyring says it was done.
    await tamper(server, ("UPDATE keys SET mac = NULL, owner = 'thief' WHERE id = ?", (key.id,)))
    forged = await fails(server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id)))
    assert forged.code == grpc.StatusCode.DATA_LOSS


async def test_a_handle_forged_after_it_was_validated_is_not_served_from_memory(
    server: Harness,
) -> None:
    # The store keeps the mapping of a handle's settled columns once read: a forged
    # column must still be read, mapped and checked, never answered from that memory.
    victim = server.client(await _service(server, "victim"))
    thief_token = await _service(server, "thief")
    issued = await victim.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
    request = handles_pb2.ValidateHandleRequest(token=issued.token)
    assert (await victim.handles.ValidateHandle(request)).validation.valid
    await tamper(
        server,
        (
            "UPDATE handles SET owner = 'thief', max_usage = max_usage + 1 WHERE id = ?",
            (issued.handle.id,),
        ),
    )
    seen = (await server.client(thief_token).handles.ValidateHandle(request)).validation
    assert not seen.valid and seen.handle_id == ""
    read = await fails(
        server.admin.handles.GetHandle(handles_pb2.GetHandleRequest(handle_id=issued.handle.id))
    )
    assert read.code == grpc.StatusCode.DATA_LOSS


async def test_a_forged_configuration_revision_is_refused_and_the_scheduler_carries_on(
    server: Harness,
) -> None:
    """Written while the server runs (on PostgreSQL, beside other replicas): the next
    calls that apply the configuration are DATA_LOSS, the scheduler keeps its own
    (authentic) configuration and keeps running, and deleting the forged row heals both."""
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    [latest] = query(server, "SELECT * FROM config ORDER BY revision DESC LIMIT 1")
    weakened = latest["body"].replace('"prevent_reuse": true', '"prevent_reuse": false')
    query(
        server,
        "INSERT INTO config (revision, body, update_time, updated_by, mac) VALUES (?, ?, ?, ?, ?)",
        (latest["revision"] + 1, weakened, latest["update_time"], "admin", b"\0" * 32),
    )
    request = handles_pb2.ValidateHandleRequest(token=issued.token)
    refused = await fails(server.admin.handles.ValidateHandle(request))
    assert refused.code == grpc.StatusCode.DATA_LOSS
    server.clock.advance(timedelta(minutes=4, seconds=30))  # the warning: the scheduler wakes
    await asyncio.sleep(0.3)
    health = await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="scheduler"))
    [part] = health.health.components
    assert part.status == admin_pb2.SERVING_STATUS_SERVING, part.reasons

    query(server, "DELETE FROM config WHERE revision = ?", (latest["revision"] + 1,))
    assert (await server.admin.handles.ValidateHandle(request)).validation.valid
    server.clock.advance(timedelta(seconds=30))  # the device type rotates at 5 minutes
    for _ in range(100):
        if any(e.kind is EventKind.ROTATED for e in await server.events()):
            break
        await asyncio.sleep(0.05)
    assert any(e.kind is EventKind.ROTATED for e in await server.events())
