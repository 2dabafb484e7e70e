"""The scheduler, driven by a moved clock: every transition and its event, exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.app import HEALTH_INTERVAL
from keyturn_server.clock import ManualClock
from keyturn_server.domain import lifecycle
from keyturn_server.domain.events import Event, EventKind
from keyturn_server.domain.handle_lifecycle import HandleLifecycle
from keyturn_server.domain.repositories import SealedKind
from tests.harness import Harness, fails, health_becomes
from tests.test_listeners import settings

E = events_pb2
DAY = timedelta(days=1)


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Harness]:
    """A server that keeps its event log for a year, so the tests can read it whole."""
    harness = Harness(tmp_path / "data", clock, event_retention=timedelta(days=400))
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def log(server: Harness) -> list[Event]:
    """The event log as stored, in sequence order."""
    return await server.events()


async def kinds_for(server: Harness, subject_id: str) -> list[str]:
    return [e.kind.value for e in await log(server) if e.subject_id == subject_id]


async def material(server: Harness, key_id: str, version: int) -> bytes | None:
    return await server.sealed_material(key_id, version)


async def test_keys_warn_rotate_on_schedule_and_expire_old_versions(server: Harness) -> None:
    key = (
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
    ).key  # rotate 30 d, warn 7 d, lifetime 90 d
    old = await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"a"))

    await server.advance(23 * DAY - timedelta(seconds=1))
    assert await kinds_for(server, key.id) == ["CREATED"]
    await server.advance(timedelta(seconds=1))
    assert await kinds_for(server, key.id) == ["CREATED", "EXPIRING"]
    await server.advance(7 * DAY)
    assert await kinds_for(server, key.id) == ["CREATED", "EXPIRING", "ROTATED"]
    rotated = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    assert rotated.primary_version == 2

    for _ in range(60):  # a day at a time: v2 rotates at 60 d, v3 and v1's expiry at 90 d
        await server.advance(DAY)
    kinds = await kinds_for(server, key.id)
    assert kinds.count("EXPIRING") == 3 and kinds.count("ROTATED") == 3
    assert kinds.count("EXPIRED") == 1
    version_one = next(e for e in await log(server) if e.kind is EventKind.EXPIRED)
    assert version_one.key_version == 1
    gone = await fails(
        server.admin.keys.Decrypt(keys_pb2.DecryptRequest(key_id=key.id, ciphertext=old.ciphertext))
    )
    assert gone.code == grpc.StatusCode.FAILED_PRECONDITION and gone.reason == "VERSION_EXPIRED"
    assert await material(server, key.id, 1) is None  # destroyed, not just hidden


async def test_without_enforced_rotation_a_key_warns_twice_then_expires(server: Harness) -> None:
    await server.set_policies(enforce_rotation=False)
    key = (
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
    ).key  # rotate 24 h, warn 2 h, lifetime 7 d
    for _ in range(7 * 24):
        await server.advance(timedelta(hours=1))
    assert await kinds_for(server, key.id) == [
        "CREATED",
        "EXPIRING",
        "EXPIRING",
        "EXPIRED",
        "EXPIRED",
    ]
    expired = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    assert expired.status == resources_pb2.KEY_STATUS_EXPIRED
    refused = await fails(
        server.admin.keys.ComputeMac(keys_pb2.ComputeMacRequest(key_id=key.id, data=b"x"))
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_rotation_announced_then_no_longer_enforced_leaves_the_expiry_announced(
    server: Harness,
) -> None:
    """An operator turns enforced rotation off after the warning of a rotation went out:
    the rotation is not made, and the expiry that now comes is announced."""
    handle = (
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    ).handle  # warn 1 min ahead of its rotation (5 min) and of its expiry (30 min)
    await server.advance(timedelta(minutes=4))
    await server.set_policies(enforce_rotation=False)
    for _ in range(26):
        await server.advance(timedelta(minutes=1))
    events = [e for e in await log(server) if e.subject_id == handle.id]
    assert [e.kind.value for e in events] == ["CREATED", "EXPIRING", "EXPIRING", "EXPIRED"]
    assert events[1].reason.startswith("rotation at ")
    assert events[2].reason.startswith("expiry at ")

    await server.set_policies(enforce_rotation=True)
    key = (
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
    ).key  # warn 2 h ahead of its rotation (24 h) and of its expiry (7 d)
    await server.advance(timedelta(hours=22))
    await server.set_policies(enforce_rotation=False)
    await server.advance(7 * DAY - timedelta(hours=24))
    await server.advance(timedelta(hours=2))
    events = [e for e in await log(server) if e.subject_id == key.id]
    assert [e.kind.value for e in events] == [
        "CREATED",
        "EXPIRING",
        "EXPIRING",
        "EXPIRED",
        "EXPIRED",
    ]
    assert events[2].reason.startswith("expiry at ")


async def test_a_deadline_missed_while_down_is_handled_once_at_start(server: Harness) -> None:
    key = (
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
    ).key  # rotate 7 d
    handle = (
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    ).handle  # lifetime 30 min
    await server.stop()
    server.clock.advance(8 * DAY)
    await server.start()
    await server.settle()
    await server.restart()
    await server.settle()
    # Caught up in deadline order, each once: the key's warning, then its rotation; the
    # handle is past its end of life, so it just expires (no warning, no rotation).
    assert await kinds_for(server, key.id) == ["CREATED", "EXPIRING", "ROTATED"]
    assert await kinds_for(server, handle.id) == ["CREATED", "EXPIRED"]
    assert (
        await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    ).primary_version == 2


async def test_more_handles_than_a_batch_that_ended_while_down_all_expire(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their warnings and rotations are due before their expiries, and are no longer
    made (the handles' lives are over): each handle expires instead, so a batch of them
    does not keep the scheduler from the expiries and everything after them."""
    monkeypatch.setattr(lifecycle, "BATCH", 3)
    made = [
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
        for _ in range(5)
    ]  # warn 4 min, rotate 5 min, lifetime 30 min
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))).key
    await server.stop()
    server.clock.advance(8 * DAY)
    await server.start()
    await server.settle()
    for handle in made:
        assert await kinds_for(server, handle.handle.id) == ["CREATED", "EXPIRED"]
    assert await kinds_for(server, key.id) == ["CREATED", "EXPIRING", "ROTATED"]


async def test_more_keys_than_a_batch_whose_primaries_ended_while_down_are_replaced(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their warnings are due first and are moot (the primaries' lives are over): they
    are dropped, so that the rotations that replace the primaries come."""
    monkeypatch.setattr(lifecycle, "BATCH", 3)
    made = [
        (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))).key
        for _ in range(5)
    ]  # warn 6 d, rotate 7 d, lifetime 30 d
    await server.stop()
    server.clock.advance(31 * DAY)
    await server.start()
    await server.settle()
    for key in made:
        assert await kinds_for(server, key.id) == ["CREATED", "ROTATED", "EXPIRED"]
        now = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
        assert now.primary_version == 2 and now.status == resources_pb2.KEY_STATUS_ACTIVE


async def test_a_missed_warning_and_rotation_are_caught_up_one_by_one_in_order(
    server: Harness,
) -> None:
    """No scheduler ran past a handle's warning (4 min) and rotation (5 min): both happen,
    the warning first and naming the rotation it was for, as they would have on time."""
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    assert server.app is not None and server.app.services is not None
    await server.app.services.scheduler.stop()
    server.clock.advance(timedelta(minutes=7))
    await server.settle()
    events = [e for e in await log(server) if e.subject_id == issued.handle.id]
    assert [e.kind.value for e in events] == ["CREATED", "EXPIRING", "ROTATED"]
    rotation = issued.handle.rotate_time.ToDatetime().replace(tzinfo=server.clock.now().tzinfo)
    assert events[1].reason == f"rotation at {rotation.isoformat()}"


async def test_keys_missed_warnings_and_rotations_are_caught_up_in_deadline_order(
    server: Harness,
) -> None:
    """Two keys whose deadlines interleave: the catch-up follows the deadlines' order
    across keys and kinds, not one kind after another."""
    first = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    server.clock.advance(timedelta(hours=23))  # session: rotate 24 h, warn 2 h ahead
    second = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    assert server.app is not None and server.app.services is not None
    await server.app.services.scheduler.stop()
    server.clock.advance(timedelta(hours=24))
    await server.settle()
    scheduled = [
        (e.subject_id, e.kind.value)
        for e in await log(server)
        if e.kind in (EventKind.EXPIRING, EventKind.ROTATED)
    ]
    # first: warn 22 h, rotate 24 h; second: warn 23 h + 22 h, rotate 23 h + 24 h.
    assert scheduled == [
        (first.id, "EXPIRING"),
        (first.id, "ROTATED"),
        (second.id, "EXPIRING"),
        (second.id, "ROTATED"),
    ]


async def test_a_catch_up_storm_lets_other_calls_in_every_few_deadlines(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit of the scheduler's work runs on the event loop, and nothing else is served
    while it does: hundreds of handles' missed warnings and rotations are acted on a few
    at a time, not a hundred (about a millisecond each) in one go."""
    made = [
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
        for _ in range(150)
    ]  # rotate 5 min, warn 1 min ahead
    assert server.app is not None and server.app.services is not None
    await server.app.services.scheduler.stop()
    server.clock.advance(timedelta(minutes=6))  # 150 warnings and 150 rotations due

    since_turn = most = 0

    def counted(step: Callable[..., bool]) -> Callable[..., bool]:
        def act(*args: object) -> bool:
            nonlocal since_turn, most
            since_turn += 1
            most = max(most, since_turn)
            return step(*args)

        return act

    monkeypatch.setattr(HandleLifecycle, "warn", counted(HandleLifecycle.warn))
    monkeypatch.setattr(HandleLifecycle, "rotate_due", counted(HandleLifecycle.rotate_due))
    settling = asyncio.ensure_future(server.settle())
    while not settling.done():
        since_turn = 0
        await asyncio.sleep(0)
    await settling
    assert most <= lifecycle.UNIT
    kinds = [e.kind.value for e in await log(server) if e.kind is not EventKind.CREATED]
    assert sorted(kinds) == ["EXPIRING"] * len(made) + ["ROTATED"] * len(made)


async def test_handles_rotate_automatically_and_the_old_secret_has_a_grace(
    server: Harness,
) -> None:
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )  # rotate 5 min, warn 1 min (grace 1 min), lifetime 30 min
    await server.advance(timedelta(minutes=4))
    await server.advance(timedelta(minutes=1))
    assert await kinds_for(server, issued.handle.id) == ["CREATED", "EXPIRING", "ROTATED"]
    in_grace = await server.admin.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=issued.token)
    )
    assert in_grace.validation.valid and in_grace.validation.rotated
    picked = await server.admin.handles.RotateHandle(
        handles_pb2.RotateHandleRequest(token=issued.token)
    )
    assert picked.handle.generation == 2
    assert (
        await server.admin.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=picked.token)
        )
    ).validation.valid

    await server.advance(timedelta(minutes=1))
    delivered = await server.sealed_values(SealedKind.DELIVERED_TOKEN)
    pending = await server.sealed_values(SealedKind.PENDING_SUCCESSOR)
    assert delivered == [] and pending == []  # the pickup window is over


async def test_handles_expire_and_exhaust_with_one_event_each(server: Harness) -> None:
    short = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="api")
    )  # lifetime 1 h
    used = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )  # max usage 50
    for _ in range(50):
        await server.admin.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=used.token)
        )
    assert (await kinds_for(server, used.handle.id)).count("EXHAUSTED") == 1
    await server.advance(timedelta(hours=1))
    await server.advance(timedelta(hours=1))
    assert (await kinds_for(server, short.handle.id)).count("EXPIRED") == 1
    assert (await kinds_for(server, used.handle.id)).count(
        "EXPIRED"
    ) == 1  # exhausted, then expired


@pytest.mark.parametrize(
    ("removed_at", "expected"),
    [
        (
            timedelta(hours=21),
            ["CREATED", "REMOVED", "RESTORED", "EXPIRING", "ROTATED"],
        ),
        (
            timedelta(hours=22, minutes=30),
            ["CREATED", "EXPIRING", "REMOVED", "RESTORED", "ROTATED"],
        ),
    ],
    ids=["removed-before-its-warning", "removed-after-its-warning"],
)
async def test_a_key_restored_inside_its_warning_window_is_warned_once(
    server: Harness, removed_at: timedelta, expected: list[str]
) -> None:
    key = (
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
    ).key  # warn 22 h, rotate 24 h
    await server.advance(removed_at)
    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=key.id))
    await server.advance(timedelta(hours=23) - removed_at)
    await server.admin.keys.RestoreKey(keys_pb2.RestoreKeyRequest(key_id=key.id))
    await server.advance(timedelta(minutes=1))
    await server.advance(timedelta(hours=1))
    assert await kinds_for(server, key.id) == expected
    warning = next(e for e in await log(server) if e.kind is EventKind.EXPIRING)
    assert warning.reason == f"rotation at {(key.create_time.ToDatetime() + DAY).isoformat()}+00:00"


async def test_key_destruction_completes_after_the_waiting_period(server: Harness) -> None:
    await server.restart(destroy_delay=timedelta(hours=1))
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="signing"))).key
    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=key.id))
    await server.advance(timedelta(hours=1))
    assert await kinds_for(server, key.id) == ["CREATED", "REMOVED", "DESTROYED"]
    assert await material(server, key.id, 1) is None


async def test_events_past_retention_are_pruned(server: Harness) -> None:
    await server.restart(event_retention=timedelta(hours=1))
    await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
    assert await log(server)
    await server.advance(timedelta(hours=1, seconds=1))
    assert not await log(server)


async def test_handles_that_ended_are_deleted_once_past_the_retention(server: Harness) -> None:
    """Counted from the end of a handle's maximum lifetime, whatever ended it: a revoked
    session handle (24 h) is kept as long as it could have lived, then the retention."""
    await server.restart(handle_retention=timedelta(hours=2))

    async def generate(kind: str) -> handles_pb2.GenerateHandleResponse:
        request = handles_pb2.GenerateHandleRequest(type=kind)
        made: handles_pb2.GenerateHandleResponse = await server.admin.handles.GenerateHandle(
            request
        )
        return made

    async def kept(made: handles_pb2.GenerateHandleResponse) -> bool:
        request = handles_pb2.GetHandleRequest(handle_id=made.handle.id)
        outcome = "OK"
        try:
            await server.admin.handles.GetHandle(request)
        except grpc.aio.AioRpcError as error:
            outcome = error.code().name
        assert outcome in ("OK", "NOT_FOUND"), outcome
        assert server.app is not None
        secrets = server.app.store.read().secrets_of(made.handle.id)
        assert bool(secrets) == (outcome == "OK")  # its secrets go with it
        return outcome == "OK"

    expired = await generate("api")  # lifetime 1 h
    revoked = await generate("session")  # lifetime 24 h
    await server.admin.handles.RemoveHandle(
        handles_pb2.RemoveHandleRequest(handle_id=revoked.handle.id)
    )
    session = await generate("session")
    await server.advance(timedelta(hours=1))
    assert await kept(expired)  # ended an instant ago
    await server.advance(timedelta(hours=2))
    assert not await kept(expired)
    assert await kept(revoked) and await kept(session)
    refused = await server.admin.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=expired.token)
    )
    assert not refused.validation.valid
    await server.advance(timedelta(hours=21))  # the sessions' lifetime ends: 24 h
    assert await kept(revoked) and await kept(session)  # ended, within the retention
    await server.advance(timedelta(hours=2))
    assert not await kept(revoked) and not await kept(session)


async def test_a_backlog_of_ended_handles_goes_in_batches(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lifecycle, "PURGE_BATCH", 3)
    await server.restart(handle_retention=timedelta(hours=1))
    made = [
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="api"))
        for _ in range(7)
    ]
    await server.advance(timedelta(hours=1))
    await server.advance(timedelta(hours=1, seconds=1))
    listed = await server.admin.handles.ListHandles(handles_pb2.ListHandlesRequest())
    assert not {h.id for h in listed.handles} & {m.handle.id for m in made}


async def test_with_the_retention_off_ended_handles_are_kept(server: Harness) -> None:
    await server.restart(handle_retention=None)
    made = await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="api"))
    await server.advance(timedelta(days=400))
    kept = await server.admin.handles.GetHandle(
        handles_pb2.GetHandleRequest(handle_id=made.handle.id)
    )
    assert kept.status == resources_pb2.HANDLE_STATUS_EXPIRED


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], timedelta(days=30)),
        (["--handle-retention", "90d"], timedelta(days=90)),
        (["--handle-retention", "off"], None),
        (["--handle-retention", "0"], None),
    ],
)
def test_the_handle_retention_comes_from_its_flag(
    argv: list[str], expected: timedelta | None
) -> None:
    assert settings(argv).handle_retention == expected


def test_a_handle_retention_shorter_than_an_hour_is_refused() -> None:
    with pytest.raises(SystemExit):
        settings(["--handle-retention", "10m"])


async def test_scheduler_lag_shows_in_health_when_it_stops(server: Harness) -> None:
    await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    assert server.app is not None and server.app.services is not None
    await server.app.services.scheduler.stop()
    server.clock.advance(timedelta(minutes=40))
    health = (
        await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="scheduler"))
    ).health
    [scheduler] = health.components
    assert scheduler.status == admin_pb2.SERVING_STATUS_NOT_SERVING
    assert scheduler.scheduler.lag.ToTimedelta() >= timedelta(minutes=30)
    assert health.status == admin_pb2.SERVING_STATUS_NOT_SERVING


async def test_a_scheduler_falling_behind_is_said_once_when_health_turns_not_serving(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    assert server.app is not None and server.app.services is not None
    await server.app.services.scheduler.stop()
    server.clock.advance(timedelta(minutes=40))
    health = health_pb2_grpc.HealthStub(server.channel())
    assert await health_becomes(health, health_pb2.HealthCheckResponse.NOT_SERVING)
    await asyncio.sleep(HEALTH_INTERVAL + 1)  # another verdict, the same
    said = [r for r in caplog.records if r.name == "keyturn.health"]
    assert [r.getMessage() for r in said] == ["health: NOT_SERVING"]
    assert "oldest overdue deadline" in said[0].reasons  # type: ignore[attr-defined]


@pytest.mark.sqlite_only
def test_every_scheduler_query_uses_an_index(tmp_path: object) -> None:
    """The scheduler finds due work through indexes, so its cost does not grow with
    the number of records: no query plan may scan a table."""
    import sqlite3
    from pathlib import Path

    from keyturn_server.store.schema import migrations
    from keyturn_server.store.sql.deadlines import DUE, NEXT
    from keyturn_server.store.sql.handles import ENDED_BEFORE, OLDEST_ENDED

    assert isinstance(tmp_path, Path)
    conn = sqlite3.connect(tmp_path / "plan.db")
    for _, sql in migrations("sqlite"):
        conn.executescript(sql)
    conn.execute("ANALYZE")
    queries = [*NEXT.values(), *DUE.values(), OLDEST_ENDED, ENDED_BEFORE]
    for sql in queries:
        params = () if "?" not in sql else (0, 100)
        steps = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
        assert steps, sql
        for step in steps:
            assert "INDEX" in step, (sql, steps)  # SEARCH/SCAN ... USING [COVERING] INDEX
    conn.close()


async def test_watch_sees_scheduled_transitions(server: Harness) -> None:
    stream = server.admin.handles.WatchExpiring(E.WatchExpiringRequest(), timeout=30)
    first = await stream.read()
    assert first.kind == E.EVENT_KIND_SNAPSHOT_COMPLETE
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    await server.advance(timedelta(minutes=4))
    kinds = []
    while len(kinds) < 2:
        event = await stream.read()
        kinds.append(E.EventKind.Name(event.kind))
        assert event.handle.id == issued.handle.id
    assert kinds == ["EVENT_KIND_CREATED", "EVENT_KIND_EXPIRING"]
    stream.cancel()
