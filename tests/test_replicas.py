"""Several replicas on one PostgreSQL database (run with KEYTURN_TEST_BACKEND=postgres)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import duration_pb2

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.clock import ManualClock
from keyturn_server.domain.events import EventKind
from tests.harness import Harness, fails, failure

pytestmark = pytest.mark.postgres
E = events_pb2


async def rotations(replica: Harness, handle_id: str) -> int:
    """ROTATED events of a handle in the shared event log."""
    events = await replica.events()
    return sum(1 for e in events if e.kind is EventKind.ROTATED and e.subject_id == handle_id)


async def leads(replica: Harness, within: float = 2) -> bool:
    """Whether ``replica`` holds the scheduler lease (it is taken in the background)."""
    assert replica.app is not None
    leadership = replica.app.leadership
    changed = asyncio.Event()
    leadership.on_change(changed.set)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while leadership.lease() is None:
                await changed.wait()
                changed.clear()
    return leadership.lease() is not None


@pytest.fixture
async def replicas(tmp_path: Path, clock: ManualClock) -> AsyncIterator[list[Harness]]:
    first = Harness(tmp_path / "a", clock, heartbeat_interval=timedelta(seconds=0.2))
    await first.start()
    second = Harness(
        tmp_path / "b", clock, store=first.settings.store, heartbeat_interval=timedelta(seconds=0.2)
    )
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy(tmp_path / "a" / "admin.token", tmp_path / "b" / "admin.token")
    await second.start()
    try:
        yield [first, second]
    finally:
        await second.stop()
        await first.stop()


async def test_a_subscriber_on_one_replica_sees_every_event_of_the_other(
    replicas: list[Harness],
) -> None:
    writer, reader = replicas
    stream = reader.admin.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=0), timeout=30)
    for _ in range(15):
        await writer.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
        await reader.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
    sequences: list[int] = []
    while len(sequences) < 30:
        event = await asyncio.wait_for(stream.read(), 10)
        if event.kind == E.EVENT_KIND_CREATED:
            sequences.append(event.sequence)
    assert sequences == list(range(1, 31))
    stream.cancel()


async def test_validations_across_replicas_never_exceed_max_usage(
    replicas: list[Harness],
) -> None:
    issued = await replicas[0].admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )  # max usage 50
    calls = [
        replicas[i % 2].admin.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=issued.token)
        )
        for i in range(80)
    ]
    results = await asyncio.gather(*calls)
    assert sum(r.validation.valid for r in results) == 50
    handle = await replicas[1].admin.handles.GetHandle(
        handles_pb2.GetHandleRequest(handle_id=issued.handle.id)
    )
    assert handle.usage_count == 50


async def test_the_keys_per_owner_cap_holds_with_both_replicas_generating(
    replicas: list[Harness],
) -> None:
    cap = 10
    await replicas[0].set_policies(max_keys_per_owner=cap)
    for replica in replicas:  # the other hears of the change by NOTIFY
        assert replica.app is not None and replica.app.services is not None
        config = replica.app.services.config
        for _ in range(500):
            if config.current.policies.max_keys_per_owner == cap:
                break
            await asyncio.sleep(0.02)
        assert config.current.policies.max_keys_per_owner == cap
    calls = [
        replicas[i % 2].admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
        for i in range(40)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    made = [r for r in results if isinstance(r, keys_pb2.GenerateKeyResponse)]
    assert len(made) == cap  # concurrent transactions, one last slot: taken once


async def test_the_active_handles_per_owner_cap_holds_with_both_replicas_generating(
    replicas: list[Harness],
) -> None:
    """Both replicas (and each replica's concurrent transactions) counted the owner's
    active handles at once, each saw room for one more, and both issued it: 15 handles
    under a cap of 10 were seen. Issuing to one owner is serialised now."""
    cap = 10
    await replicas[0].set_policies(max_concurrent_handles=cap)
    owners = []
    for name in ("billing", "orders", "search", "mail"):
        created = await replicas[0].admin.admin.CreateAccessToken(
            admin_pb2.CreateAccessTokenRequest(name=name, role=resources_pb2.ROLE_SERVICE)
        )
        owners.append([replica.client(created.token) for replica in replicas])
    calls = [
        clients[i % 2].handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
        for clients in owners
        for i in range(40)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    made = Counter(
        r.handle.owner for r in results if isinstance(r, handles_pb2.GenerateHandleResponse)
    )
    assert made == dict.fromkeys(("billing", "orders", "search", "mail"), cap)
    refused = [failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert {f.reason for f in refused} == {"MAX_CONCURRENT_HANDLES"}


async def test_a_token_revoked_through_one_replica_is_refused_by_the_next_call_on_the_other(
    replicas: list[Harness],
) -> None:
    """Within the second the other replica used to keep its verdict, no time passes."""
    revoker, other = replicas
    created = await revoker.admin.admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(name="thief", role=resources_pb2.ROLE_SERVICE)
    )
    thief = other.client(created.token)
    await thief.keys.ListKeys(keys_pb2.ListKeysRequest())  # its verdict is in the other's memory
    await revoker.admin.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="thief"))
    refused = await fails(thief.keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_version_disabled_through_one_replica_is_refused_by_the_next_call_on_the_other(
    replicas: list[Harness],
) -> None:
    """The other replica holds the version's material loaded; no time passes."""
    first, second = replicas
    key = (await first.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    mac = await first.admin.keys.ComputeMac(keys_pb2.ComputeMacRequest(key_id=key.id, data=b"m"))
    await first.admin.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key.id))
    check = keys_pb2.VerifyMacRequest(key_id=key.id, data=b"m", mac=mac.mac)
    assert (await second.admin.keys.VerifyMac(check)).valid
    await first.admin.keys.DisableKeyVersion(
        keys_pb2.DisableKeyVersionRequest(key_id=key.id, version=1, reason="leaked")
    )
    refused = await fails(second.admin.keys.VerifyMac(check))
    assert refused.reason == "VERSION_DISABLED"
    await second.admin.keys.EnableKeyVersion(
        keys_pb2.EnableKeyVersionRequest(key_id=key.id, version=1)
    )
    assert (await first.admin.keys.VerifyMac(check)).valid


async def test_a_token_revoked_through_one_replica_is_not_honoured_by_another_from_memory(
    replicas: list[Harness],
) -> None:
    """The other replica keeps a verdict for a second, and used it at any age when the
    token table could not be read; a table locked for maintenance is not a database that
    is away, and cannot have kept a revocation from happening."""
    revoker, other = replicas
    created = await revoker.admin.admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(name="billing", role=resources_pb2.ROLE_SERVICE)
    )
    billing = other.client(created.token)
    issued = await billing.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )  # the token's verdict is now in the other replica's memory
    await revoker.admin.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="billing"))
    other.clock.advance(timedelta(seconds=2))
    validate = handles_pb2.ValidateHandleRequest(token=issued.token)
    url = other.settings.store
    assert url is not None
    with psycopg.connect(url) as dba:  # a transaction, open until the block ends
        dba.execute("LOCK TABLE access_tokens IN ACCESS EXCLUSIVE MODE")
        refused = await fails(billing.handles.ValidateHandle(validate, timeout=10))
        assert refused.code == grpc.StatusCode.UNAVAILABLE, refused
    await asyncio.sleep(1.1)  # the read that met the lock is held back for a second
    refused = await fails(billing.handles.ValidateHandle(validate, timeout=10))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED


async def test_validations_racing_a_rotation_on_the_other_replica_never_revoke_the_handle(
    replicas: list[Harness],
) -> None:
    """A validation that waited for the handle's row while a rotation committed read the
    handle as rotated but its secret as it was before (the secret's row was not locked,
    and PostgreSQL re-reads only the locked rows): a current secret of an older
    generation, which is reuse, and the handle was revoked. 17 handles of 20."""
    rotator, validator = replicas
    for _ in range(20):
        issued = await rotator.admin.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session")
        )
        request = handles_pb2.ValidateHandleRequest(token=issued.token)
        calls = [validator.admin.handles.ValidateHandle(request) for _ in range(5)]
        calls.insert(
            2,
            rotator.admin.handles.RotateHandle(
                handles_pb2.RotateHandleRequest(handle_id=issued.handle.id)
            ),
        )
        answers = await asyncio.gather(*calls)
        handle = await rotator.admin.handles.GetHandle(
            handles_pb2.GetHandleRequest(handle_id=issued.handle.id)
        )
        assert handle.status == resources_pb2.HANDLE_STATUS_ACTIVE, handle
        assert handle.anomaly_count == 0
        validations = [
            a.validation for a in answers if isinstance(a, handles_pb2.ValidateHandleResponse)
        ]
        assert all(v.valid for v in validations), validations


async def test_concurrent_rotations_by_one_token_rotate_once_on_any_replica(
    replicas: list[Harness],
) -> None:
    """As on SQLite's single writer: one call rotates, the others are told the secret was
    already rotated. On PostgreSQL the others read the presented secret before they
    locked its handle, took it (superseded meanwhile) for reuse, and revoked the handle:
    the winner's new secret was dead on arrival."""
    for _ in range(5):
        issued = await replicas[0].admin.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session")
        )
        request = handles_pb2.RotateHandleRequest(token=issued.token)
        results = await asyncio.gather(
            *(r.admin.handles.RotateHandle(request) for r in replicas for _ in range(2)),
            return_exceptions=True,
        )
        [rotated] = [r for r in results if isinstance(r, handles_pb2.RotateHandleResponse)]
        refused = [failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert [f.reason for f in refused] == ["ALREADY_ROTATED"] * 3
        answer = await replicas[1].admin.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=rotated.token)
        )
        assert answer.validation.valid


async def test_one_access_token_name_created_at_once_on_both_replicas_is_made_once(
    replicas: list[Harness],
) -> None:
    """The others are told it exists, as one after the other would be; the insert that
    lost used to be a unique violation answered ABORTED ("retry")."""
    for attempt in range(5):
        request = admin_pb2.CreateAccessTokenRequest(
            name=f"billing-{attempt}", role=resources_pb2.ROLE_SERVICE
        )
        results = await asyncio.gather(
            *(r.admin.admin.CreateAccessToken(request) for r in replicas for _ in range(2)),
            return_exceptions=True,
        )
        made = [r for r in results if isinstance(r, admin_pb2.CreateAccessTokenResponse)]
        refused = [failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(made) == 1
        assert [(f.code, f.reason) for f in refused] == [
            (grpc.StatusCode.ALREADY_EXISTS, "TOKEN_EXISTS")
        ] * 3


async def test_a_rate_limit_lowered_on_one_replica_holds_on_the_others_next_validation(
    replicas: list[Harness],
) -> None:
    """Policy changes apply at once (DESIGN 4), wherever the next call lands; before, the
    other replica applied the old policy until its periodic refresh, up to two seconds."""
    changer, other = replicas
    issued = await other.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    await changer.set_policies(rate_limit_per_handle=3)
    results = [
        await other.admin.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=issued.token)
        )
        for _ in range(5)
    ]
    assert [r.validation.valid for r in results] == [True, True, True, False, False]
    assert results[-1].validation.reason == handles_pb2.VALIDATION_REASON_RATE_LIMITED


async def set_handle_type(replica: Harness, name: str, max_usage: int | None) -> None:
    """Add or change the custom handle type ``name``; delete it when max_usage is None."""
    types = {}
    if max_usage is not None:
        types[name] = admin_pb2.HandleTypeConfig(
            algorithm="sha256",
            handle_length=32,
            rotation_interval=duration_pb2.Duration(seconds=60),
            warning_threshold=duration_pb2.Duration(seconds=10),
            max_lifetime=duration_pb2.Duration(seconds=600),
            max_usage=max_usage,
        )
    config = await replica.admin.admin.GetConfig(admin_pb2.GetConfigRequest())
    await replica.admin.admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(handle_types=types),
            update_mask={"paths": [f"handle_types.{name}"]},
            etag=config.etag,
        )
    )


async def test_a_handle_type_changed_on_one_replica_applies_to_the_others_next_handle(
    replicas: list[Harness],
) -> None:
    changer, other = replicas
    await set_handle_type(changer, "batch", max_usage=10)
    await other.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="batch"))
    await set_handle_type(changer, "batch", max_usage=3)
    issued = await other.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="batch")
    )
    assert issued.handle.max_usage == 3
    await set_handle_type(changer, "batch", max_usage=None)
    refused = await fails(
        other.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="batch"))
    )
    assert refused.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_one_replica_leads_the_scheduler_and_rotations_happen_once(
    replicas: list[Harness],
) -> None:
    first, second = replicas
    leaders = [await leads(h, within=0) for h in replicas]
    assert sorted(leaders) == [False, True]
    issued = await first.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    first.clock.advance(timedelta(minutes=4))
    await asyncio.gather(first.settle(), second.settle())
    first.clock.advance(timedelta(minutes=1))
    await asyncio.gather(first.settle(), second.settle())
    assert await rotations(first, issued.handle.id) == 1

    leader, follower = (first, second) if leaders[0] else (second, first)
    await leader.stop()
    assert await leads(follower, within=5)  # woken as the leader's session ends
    follower.clock.advance(timedelta(minutes=5))
    await follower.settle()
    assert await rotations(follower, issued.handle.id) == 2


async def test_every_replica_reports_overdue_work_from_the_store_whoever_leads(
    replicas: list[Harness],
) -> None:
    """The leader stops scheduling (but keeps its lease): the follower's health shows the
    overdue deadline too, and NOT_SERVING once it is older than the allowed lag."""
    leaders = [await leads(h, within=0) for h in replicas]
    leader, follower = replicas if leaders[0] else replicas[::-1]
    await leader.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    assert leader.app is not None and leader.app.services is not None
    await leader.app.services.scheduler.stop()
    leader.clock.advance(timedelta(minutes=4, seconds=30))  # its warning was due at 4 min
    health = await follower.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="scheduler"))
    [part] = health.health.components
    assert part.scheduler.lag.ToTimedelta() == timedelta(seconds=30)
    assert part.status == admin_pb2.SERVING_STATUS_SERVING  # within the minute allowed
    assert not part.scheduler.leader and part.scheduler.lease_holder
    leader.clock.advance(timedelta(minutes=1))
    health = await follower.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="scheduler"))
    [part] = health.health.components
    assert part.status == admin_pb2.SERVING_STATUS_NOT_SERVING
    assert "overdue" in part.reasons[0] and part.scheduler.overdue >= 1
