"""One noisy caller cannot starve the others (issue 11, item 7).

Before: one token held 10,000 WatchExpiring streams (RSS 142 -> 355 MiB), and eight
concurrent RSA GenerateKey calls pushed another caller's p90 to 916 ms, because RSA
generation held the GIL in a worker thread of the server's own process.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from keyturn.v1 import admin_pb2
from keyturn.v1 import events_pb2 as E
from keyturn.v1 import handles_pb2 as R
from keyturn.v1 import keys_pb2 as K
from keyturn_server.store.sql.statements import SqlBase
from tests.harness import Client, Harness, fails, failure
from tests.security.attacks import validate
from tests.security.database import run_sql


def _cpu() -> float:
    """CPU time of this process (the server runs in it), not of its children."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _opened(client: Client) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
    stream = client.keys.WatchExpiring(E.WatchExpiringRequest())
    marker = await stream.read()
    assert marker.kind == E.EVENT_KIND_SNAPSHOT_COMPLETE
    return stream


async def test_one_caller_holds_at_most_a_hundred_streams(server: Harness) -> None:
    noisy = await server.client_for("service", "noisy")
    quiet = await server.client_for("service", "quiet")
    streams = await asyncio.gather(*[_opened(noisy) for _ in range(100)])
    extra = noisy.keys.WatchExpiring(E.WatchExpiringRequest())
    try:
        await extra.read()
        raise AssertionError("the 101st stream of one caller was accepted")
    except grpc.aio.AioRpcError as error:
        refused = failure(error)
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "TOO_MANY_STREAMS" and refused.metadata["limit"] == "100"
    assert refused.retry_after is not None and refused.retry_after > timedelta(0)

    (await _opened(quiet)).cancel()  # another caller is unaffected
    streams[0].cancel()
    for _ in range(100):  # the server sees the hang-up shortly after
        try:
            (await _opened(noisy)).cancel()
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("a closed stream did not free its place")
    for stream in streams[1:]:
        stream.cancel()


async def test_one_caller_runs_at_most_two_rsa_generations(server: Harness) -> None:
    noisy = await server.client_for("service", "noisy")
    quiet = await server.client_for("service", "quiet")
    calls = [noisy.keys.GenerateKey(K.GenerateKeyRequest(type="signing")) for _ in range(4)]
    other = quiet.keys.GenerateKey(K.GenerateKeyRequest(type="signing"))
    results = await asyncio.gather(*calls, other, return_exceptions=True)
    refused = [failure(r) for r in results[:4] if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == 2, results
    for r in refused:
        assert r.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert r.reason == "KEY_GENERATION_PER_CALLER" and r.retry_after is not None
    assert not isinstance(results[4], BaseException)  # the other caller got its key


async def test_rsa_generation_does_not_run_on_the_servers_event_loop(
    server: Harness, record_property: Callable[[str, object], None]
) -> None:
    """Other callers keep their latency when RSA keys are made, because the work runs in
    another process: this process spends on eight RSA keys about what it spends on eight
    AES keys (in the server's own process they cost ~50-100 ms of CPU each)."""
    callers = [await server.client_for("service", f"svc-{i}") for i in range(4)]
    await callers[0].keys.GenerateKey(K.GenerateKeyRequest(type="signing"))  # warm up

    async def eight(type_name: str) -> float:
        started = _cpu()
        await asyncio.gather(
            *[
                c.keys.GenerateKey(K.GenerateKeyRequest(type=type_name))
                for c in callers
                for _ in range(2)
            ]
        )
        return _cpu() - started

    aes, rsa = await eight("encryption"), await eight("signing")
    record_property(
        "figures", f"server-process CPU for 8 GenerateKey: AES {aes:.3f} s, RSA {rsa:.3f} s"
    )
    assert rsa < aes + 0.15, f"8 RSA keys cost {rsa:.3f} s of this process's CPU, AES {aes:.3f}"


async def test_keys_per_owner_are_capped(server: Harness) -> None:
    await server.set_policies(max_keys_per_owner=3)
    owner = await server.client_for("service", "hoarder")
    other = await server.client_for("service", "other")
    made = [await owner.keys.GenerateKey(K.GenerateKeyRequest(type="session")) for _ in range(3)]
    refused = await fails(owner.keys.GenerateKey(K.GenerateKeyRequest(type="session")))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "MAX_KEYS_PER_OWNER" and refused.metadata["limit"] == "3"
    assert refused.retry_after is not None
    assert (await other.keys.GenerateKey(K.GenerateKeyRequest(type="session"))).key.id
    # A removed key still holds material until it is destroyed: it counts until then.
    await owner.keys.RemoveKey(K.RemoveKeyRequest(key_id=made[0].key.id))
    still = await fails(owner.keys.GenerateKey(K.GenerateKeyRequest(type="session")))
    assert still.reason == "MAX_KEYS_PER_OWNER"
    await server.advance(timedelta(hours=25))  # destroyed
    assert (await owner.keys.GenerateKey(K.GenerateKeyRequest(type="session"))).key.id


async def test_handles_per_owner_are_capped_with_a_retry_delay(server: Harness) -> None:
    await server.set_policies(max_concurrent_handles=2)
    owner = await server.client_for("service", "hoarder")
    other = await server.client_for("service", "other")
    for _ in range(2):
        await owner.handles.GenerateHandle(R.GenerateHandleRequest(type="device"))
    refused = await fails(owner.handles.GenerateHandle(R.GenerateHandleRequest(type="device")))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "MAX_CONCURRENT_HANDLES"
    # When the first of its handles expires (device: 30 minutes), a place frees.
    assert refused.retry_after == timedelta(minutes=30)
    assert (await other.handles.GenerateHandle(R.GenerateHandleRequest(type="device"))).token


async def test_a_store_upgraded_to_the_owner_counts_counts_the_keys_it_holds(
    server: Harness,
) -> None:
    for _ in range(3):
        await server.admin.keys.GenerateKey(K.GenerateKeyRequest(type="session"))
    await server.stop()
    run_sql(server, "DROP TABLE key_owners")  # as schema 2 left the store
    run_sql(server, "DROP INDEX handles_ended")
    run_sql(server, "ALTER TABLE key_versions DROP COLUMN disabled_by")  # schema 6
    run_sql(server, "ALTER TABLE key_versions DROP COLUMN disabled_by_mac")
    if server.settings.store:
        run_sql(server, "DELETE FROM keyturn_schema WHERE version > 2")
    else:
        run_sql(server, "PRAGMA user_version = 2")
    await server.start()  # migration 3 counts the keys already there
    await server.set_policies(max_keys_per_owner=4)
    assert await server.admin.keys.GenerateKey(K.GenerateKeyRequest(type="session"))
    refused = await fails(server.admin.keys.GenerateKey(K.GenerateKeyRequest(type="session")))
    assert refused.reason == "MAX_KEYS_PER_OWNER"


async def test_a_key_keeps_at_most_a_hundred_enabled_versions(server: Harness) -> None:
    """Every read and rotation of a key, and every ROTATED event, carries all its
    versions: before, 1,200 manual rotations of one key made each further rotation cost
    the store's writer 55 ms (instead of 1) and each GetKey answer 27 KB, growing without
    bound. A version stays enabled until its own max lifetime, so the cap frees itself."""
    owner = await server.client_for("service", "rotator")
    key = (await owner.keys.GenerateKey(K.GenerateKeyRequest(type="session"))).key
    for _ in range(99):
        await owner.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    refused = await fails(owner.keys.RotateKey(K.RotateKeyRequest(key_id=key.id)))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "MAX_KEY_VERSIONS" and refused.metadata["limit"] == "100"
    # Session keys' versions live 7 days: the first to expire frees a place.
    assert refused.retry_after == timedelta(days=7)
    read = await owner.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert len(read.versions) == 100 and read.primary_version == 100
    # The scheduler's own rotations are never refused.
    await server.advance(timedelta(hours=24, seconds=1))
    rotated = await owner.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert rotated.primary_version == 101
    await server.advance(timedelta(days=6))  # versions 1-100 have expired
    again = await owner.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    assert again.primary_version > 101


async def test_a_services_rotations_give_one_handle_at_most_a_thousand_secrets(
    server: Harness,
) -> None:
    """Every secret a handle had stays while the handle does (using one again is reuse),
    and each rotation read all of them on the writer: before, a service could rotate one
    of its handles without bound, and with 200,000 secrets each further rotation held
    every caller for about 110 ms. Its own rotations now stop at 1,000 secrets, by
    handle_id or by token; an operator's and the scheduler's are never refused."""
    owner = await server.client_for("service", "spinner")
    operator = await server.client_for("operator", "on-call")
    made = await owner.handles.GenerateHandle(R.GenerateHandleRequest(type="session"))
    by_id = R.RotateHandleRequest(handle_id=made.handle.id)
    for _ in range(998):
        await owner.handles.RotateHandle(by_id)
    latest = await owner.handles.RotateHandle(by_id)  # the 1,000th secret
    assert latest.handle.id == made.handle.id
    for request in (by_id, R.RotateHandleRequest(token=latest.token)):
        refused = await fails(owner.handles.RotateHandle(request))
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.reason == "MAX_HANDLE_GENERATIONS" and refused.metadata["limit"] == "1000"
    # The handle itself goes on: its current secret validates, and others are served.
    assert (await validate(owner, latest.token, {})).valid
    assert (await operator.handles.RotateHandle(by_id)).token
    get = R.GetHandleRequest(handle_id=made.handle.id)
    before = (await owner.handles.GetHandle(get)).rotate_time.ToDatetime()
    await server.advance(timedelta(hours=1, seconds=1))  # the scheduler's rotation
    assert (await owner.handles.GetHandle(get)).rotate_time.ToDatetime() > before


async def test_disabled_versions_count_toward_the_version_cap(server: Harness) -> None:
    """A disabled version is read and carried like an enabled one until its max lifetime:
    if it did not count, a service could disable its way under the cap and grow a key
    without bound again (rotate, disable the previous version, rotate...)."""
    owner = await server.client_for("service", "looper")
    key = (await owner.keys.GenerateKey(K.GenerateKeyRequest(type="session"))).key
    for _ in range(99):
        await owner.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    for version in range(1, 11):
        await owner.keys.DisableKeyVersion(
            K.DisableKeyVersionRequest(key_id=key.id, version=version)
        )
    refused = await fails(owner.keys.RotateKey(K.RotateKeyRequest(key_id=key.id)))
    assert refused.reason == "MAX_KEY_VERSIONS" and "100 live" in refused.message


async def test_an_operator_rotates_a_key_a_thief_has_rotated_up_to_the_version_cap(
    server: Harness,
) -> None:
    """Incident response: a thief with the owner's token rotated the key to the cap, and
    the version it leaked must be replaced now. RotateKey was refused to everyone until
    the oldest version expired (7 days for a session key, a year for a signing key)."""
    owner = await server.client_for("service", "victim")
    operator = await server.client_for("operator", "on-call")
    key = (await owner.keys.GenerateKey(K.GenerateKeyRequest(type="session"))).key
    for _ in range(99):
        await owner.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    refused = await fails(owner.keys.RotateKey(K.RotateKeyRequest(key_id=key.id)))
    assert refused.reason == "MAX_KEY_VERSIONS" and "operator" in refused.message
    for caller in (operator, server.admin):
        rotated = await caller.keys.RotateKey(
            K.RotateKeyRequest(key_id=key.id, reason="version leaked")
        )
        made = await owner.keys.ComputeMac(K.ComputeMacRequest(key_id=key.id, data=b"x"))
        assert made.key_version == rotated.primary_version
    assert rotated.primary_version == 102
    audited = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="key.rotate", principal="on-call")
    )
    assert [(e.resource_id, e.reason) for e in audited.events] == [(key.id, "version leaked")]


async def test_a_handles_rotation_reads_its_live_secrets_not_its_history(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every secret a handle had is kept (a superseded one presented is reuse), and each
    rotation used to read and authenticate all of them in the store's writer: after 1,200
    rotations of one handle each further one cost 30 ms instead of 4, growing without
    bound for as long as the handle lives."""
    owner = await server.client_for("service", "rotator")
    made = await owner.handles.GenerateHandle(R.GenerateHandleRequest(type="session"))
    for _ in range(5):
        await asyncio.gather(
            *[
                owner.handles.RotateHandle(R.RotateHandleRequest(handle_id=made.handle.id))
                for _ in range(60)
            ]
        )
    rotate = R.RotateHandleRequest(handle_id=made.handle.id)
    older = (await owner.handles.RotateHandle(rotate)).token
    previous = (await owner.handles.RotateHandle(rotate)).token
    read: list[int] = []
    fetch = SqlBase._all

    def counted(self: SqlBase, sql: str, params: Any = ()) -> list[Any]:
        found = fetch(self, sql, params)
        if "FROM handle_secrets WHERE handle_id" in sql:
            read.append(len(found))
        return found

    monkeypatch.setattr(SqlBase, "_all", counted)
    rotated = await owner.handles.RotateHandle(rotate)
    assert sum(read) <= 2, f"one rotation read {read} secrets of 303"
    assert (await validate(owner, rotated.token, {})).valid
    # The secret it superseded keeps its grace; the one before has none left.
    assert (await validate(owner, previous, {})).rotated
    assert (await validate(owner, older, {})).reason == R.VALIDATION_REASON_SUPERSEDED


async def test_one_address_holds_at_most_its_cap_of_streams_that_need_no_token(
    server: Harness,
) -> None:
    """Health.Watch and reflection streams need no token, so the per-caller stream cap
    did not apply: 20,000 Health.Watch streams from one host, with no credentials,
    took the server from 72 to 521 MiB. A peer now holds as many as a caller may."""
    await server.restart(max_streams_per_caller=3)
    channel = server.channel()
    health = health_pb2_grpc.HealthStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(3)]
    for watch in watches:
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

    refused = await fails(health.Watch(health_pb2.HealthCheckRequest()).read())
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "TOO_MANY_STREAMS" and refused.metadata["limit"] == "3"
    assert refused.retry_after is not None
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    also = await fails(reflection.ServerReflectionInfo(iter([listing])).read())
    assert also.reason == "TOO_MANY_STREAMS"
    # A check is not a stream; a closed stream frees its place.
    assert (await health.Check(health_pb2.HealthCheckRequest())).status == 1
    watches[0].cancel()
    for _ in range(100):
        try:
            answer = await reflection.ServerReflectionInfo(iter([listing])).read()
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("a closed stream did not free its place")
    assert "keyturn.v1.KeyService" in {s.name for s in answer.list_services_response.service}
    for watch in watches[1:]:
        watch.cancel()
