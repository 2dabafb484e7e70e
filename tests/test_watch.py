"""WatchExpiring: snapshot, resume exactly once and in order, filters, tokens only for
their owner, heartbeats, and slow subscribers that cannot hold anyone back."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.clock import ManualClock
from keyturn_server.domain import watch
from keyturn_server.domain.access import Principal, Role
from keyturn_server.domain.errors import OutOfRange
from keyturn_server.domain.events import Subject
from keyturn_server.domain.watch import WatchRequest
from tests.harness import Client, Harness, fails

E = events_pb2
LIVE = (E.EVENT_KIND_HEARTBEAT, E.EVENT_KIND_SNAPSHOT_COMPLETE)


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Harness]:
    harness = Harness(
        tmp_path / "data",
        clock,
        heartbeat_interval=timedelta(seconds=0.2),
        event_retention=timedelta(days=30),
    )
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def collect(stream: Any, count: int, within: float = 10) -> list[E.ExpiryEvent]:
    """The next ``count`` stored events of a stream (heartbeats and markers skipped)."""
    found: list[E.ExpiryEvent] = []

    async def read() -> None:
        while len(found) < count:
            event = await stream.read()
            assert event is not grpc.aio.EOF
            if event.kind not in LIVE:
                found.append(event)

    await asyncio.wait_for(read(), within)
    return found


async def make_events(client: Client, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
        ids.append(response.key.id)
    return ids


async def test_a_new_watch_sends_the_warning_window_then_a_marker_then_live(
    server: Harness,
) -> None:
    inside = (
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
    ).key  # warns 22 h after creation
    await server.advance(timedelta(hours=22))
    outside = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    stream = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(), timeout=30)
    snapshot = await stream.read()
    assert snapshot.snapshot and snapshot.kind == E.EVENT_KIND_EXPIRING
    assert snapshot.key.id == inside.id and snapshot.sequence == 0
    assert snapshot.deadline == inside.next_rotation_time
    marker = await stream.read()
    assert marker.kind == E.EVENT_KIND_SNAPSHOT_COMPLETE and marker.latest_sequence > 0
    await server.admin.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=outside.id))
    [live] = await collect(stream, 1)
    assert live.kind == E.EVENT_KIND_ROTATED and live.key.id == outside.id
    assert live.sequence == marker.latest_sequence + 1
    stream.cancel()


async def test_resume_delivers_every_event_exactly_once_in_order(server: Harness) -> None:
    await make_events(server.admin, 30)
    rng = random.Random(7)
    for _ in range(5):
        point = rng.randrange(0, 30)
        stream = server.admin.keys.WatchExpiring(
            E.WatchExpiringRequest(resume_after=point), timeout=30
        )
        events = await collect(stream, 30 - point)
        assert [e.sequence for e in events] == list(range(point + 1, 31))
        stream.cancel()


async def test_replayed_events_show_the_record_as_it_was_when_they_happened(
    server: Harness,
) -> None:
    """Resumed long after the fact (the handle has expired since), a ROTATED event still
    shows an ACTIVE handle and the warning an EXPIRING one: the status is the event's."""
    from keyturn.v1 import resources_pb2

    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )  # warn at 4 min, rotate at 5 min, expire at 30 min
    await server.advance(timedelta(minutes=5))
    await server.advance(timedelta(hours=1))  # expired since
    stream = server.admin.handles.WatchExpiring(
        E.WatchExpiringRequest(resume_after=0, ids=[issued.handle.id]), timeout=30
    )
    events = await collect(stream, 4)
    stream.cancel()
    H = resources_pb2.HandleStatus
    assert [(E.EventKind.Name(e.kind), H.Name(e.handle.status)) for e in events] == [
        ("EVENT_KIND_CREATED", "HANDLE_STATUS_ACTIVE"),
        ("EVENT_KIND_EXPIRING", "HANDLE_STATUS_EXPIRING"),
        ("EVENT_KIND_ROTATED", "HANDLE_STATUS_ACTIVE"),
        ("EVENT_KIND_EXPIRED", "HANDLE_STATUS_EXPIRED"),
    ]


async def test_disconnecting_at_random_points_and_resuming_loses_and_repeats_nothing(
    server: Harness,
) -> None:
    producer = asyncio.create_task(make_events(server.admin, 60))
    seen: list[int] = []
    last = 0
    rng = random.Random(11)
    while len(seen) < 60:
        stream = server.admin.keys.WatchExpiring(
            E.WatchExpiringRequest(resume_after=last), timeout=30
        )
        take = rng.randint(1, 9)
        try:
            for event in await collect(stream, min(take, 60 - len(seen))):
                seen.append(event.sequence)
                last = event.sequence
        finally:
            stream.cancel()
    await producer
    assert seen == list(range(1, 61))


async def test_a_resume_point_older_than_retention_is_out_of_range(server: Harness) -> None:
    await server.restart(event_retention=timedelta(hours=1))
    await make_events(server.admin, 3)
    await server.advance(timedelta(hours=2))
    await make_events(server.admin, 1)
    stream = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=1))
    failed = await fails(collect(stream, 1))
    assert failed.code == grpc.StatusCode.OUT_OF_RANGE
    assert failed.reason == "RESUME_POINT_EXPIRED"
    fresh = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=3))
    [event] = await collect(fresh, 1)
    assert event.sequence == 4
    fresh.cancel()


async def test_events_pruned_while_a_replay_reads_end_it_out_of_range_not_skipped(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retention passes events a resumed stream has not replayed yet (a server started
    after a long stop prunes what its first subscribers replay): the stream ends with
    OUT_OF_RANGE where it stands, instead of going on after the gap."""
    monkeypatch.setattr(watch, "REPLAY_BATCH", 2)
    await make_events(server.admin, 5)  # sequences 1-5
    server.clock.advance(timedelta(days=20))
    await make_events(server.admin, 5)  # 6-10
    assert server.app is not None and server.app._watch is not None  # the servicer's
    request = WatchRequest(Subject.KEY, [], [], "", [], 0, False)
    stream = server.app._watch.watch(Principal("admin", Role.ADMIN), request)
    replayed: list[int] = []

    async def replay() -> None:
        async with contextlib.aclosing(stream):
            async for item in stream:
                if item.event is None:
                    return  # the live part: the replay went on past the gap
                replayed.append(item.event.sequence)
                if item.event.sequence == 1:
                    await server.advance(timedelta(days=11))  # 1-5 pass the 30 days

    with pytest.raises(OutOfRange) as ended:
        await replay()
    assert replayed == [1, 2]
    assert ended.value.reason == "RESUME_POINT_EXPIRED"
    assert ended.value.metadata["oldest_sequence"] == "6"


async def test_a_resume_point_ahead_of_the_log_is_out_of_range(server: Harness) -> None:
    await make_events(server.admin, 2)
    stream = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=99))
    failed = await fails(collect(stream, 1))
    assert failed.code == grpc.StatusCode.OUT_OF_RANGE


@pytest.mark.parametrize(
    ("request_filter", "expected"),
    [
        ({"types": ["encryption"]}, {"enc created", "enc rotated"}),
        ({"kinds": [E.EVENT_KIND_ROTATED]}, {"enc rotated"}),
        ({"ids": ["<sig>"]}, {"sig created"}),
        ({"owner": "alice"}, {"alice created"}),
    ],
    ids=["types", "kinds", "ids", "owner"],
)
async def test_filters(server: Harness, request_filter: dict[str, Any], expected: set[str]) -> None:
    alice = await server.client_for("service", "alice")
    enc = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    sig = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="signing"))).key
    mine = (await alice.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    await server.admin.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=enc.id))
    names = {enc.id: "enc", sig.id: "sig", mine.id: "alice"}
    wanted = {k: ([sig.id] if v == ["<sig>"] else v) for k, v in request_filter.items()}
    stream = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=0, **wanted))
    found = set()
    try:
        while True:
            event = await asyncio.wait_for(stream.read(), 5)
            if event.kind == E.EVENT_KIND_HEARTBEAT:
                break
            kind = E.EventKind.Name(event.kind).removeprefix("EVENT_KIND_").lower()
            found.add(f"{names[event.key.id]} {kind}")
    finally:
        stream.cancel()
    assert found == expected


async def test_services_watch_only_their_own(server: Harness) -> None:
    alice, bob = (
        await server.client_for("service", "alice"),
        await server.client_for("service", "bob"),
    )
    await alice.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
    stream = bob.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=0, owner="alice"))
    first = await asyncio.wait_for(stream.read(), 5)
    assert first.kind == E.EVENT_KIND_HEARTBEAT  # nothing of alice's
    stream.cancel()


async def test_rotated_secrets_reach_only_their_owners_stream(server: Harness) -> None:
    alice = await server.client_for("service", "alice")
    operator = await server.client_for("operator", "ops")
    issued = await alice.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    request = E.WatchExpiringRequest(deliver_tokens=True, kinds=[E.EVENT_KIND_ROTATED])
    streams = {
        "owner": alice.handles.WatchExpiring(request),
        "owner-without-asking": alice.handles.WatchExpiring(
            E.WatchExpiringRequest(kinds=[E.EVENT_KIND_ROTATED])
        ),
        "operator": operator.handles.WatchExpiring(request),
        "admin": server.admin.handles.WatchExpiring(request),
    }
    for stream in streams.values():
        marker = await stream.read()
        assert marker.kind == E.EVENT_KIND_SNAPSHOT_COMPLETE
    await server.advance(timedelta(minutes=5))
    received = {name: (await collect(s, 1))[0] for name, s in streams.items()}
    assert all(e.handle.id == issued.handle.id for e in received.values())
    token = received["owner"].token
    assert token.startswith("kt_device_") and token != issued.token
    assert {n: e.token for n, e in received.items() if n != "owner"} == {
        "owner-without-asking": "",
        "operator": "",
        "admin": "",
    }
    check = await alice.handles.ValidateHandle(handles_pb2.ValidateHandleRequest(token=token))
    assert check.validation.valid and not check.validation.rotated
    for stream in streams.values():
        stream.cancel()


async def test_a_handle_revoked_by_a_validation_withdraws_its_delivered_successor(
    server: Harness,
) -> None:
    """RemoveHandle and expiry withdrew the successor an automatic rotation sealed for
    the owner; a revocation decided by a validation (here a context drift the policy
    revokes on) left it collectable from the stream, a live secret of a dead handle."""
    await server.set_policies(revoke_on=[resources_pb2.ANOMALY_KIND_CONTEXT_DRIFT])
    alice = await server.client_for("service", "alice")
    bound = {"ip": "192.168.1.100", "user_agent": "MyApp/1.0"}
    issued = await alice.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device", context=bound)
    )
    await server.advance(timedelta(minutes=5))  # rotated; the successor sealed for alice
    drifted = await alice.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(
            token=issued.token, context={"ip": "198.51.100.66", "user_agent": "curl/8.5"}
        )
    )
    assert not drifted.validation.valid
    handle = await alice.handles.GetHandle(handles_pb2.GetHandleRequest(handle_id=issued.handle.id))
    assert handle.status == resources_pb2.HANDLE_STATUS_REVOKED

    replay = alice.handles.WatchExpiring(
        E.WatchExpiringRequest(deliver_tokens=True, kinds=[E.EVENT_KIND_ROTATED], resume_after=0)
    )
    [rotated] = await collect(replay, 1)
    replay.cancel()
    assert rotated.handle.id == issued.handle.id and rotated.token == ""


async def ended(stream: Any, within: float = 10) -> tuple[Any, list[E.ExpiryEvent]]:
    """How a stream ended, and the stored events it delivered before."""
    delivered: list[E.ExpiryEvent] = []

    async def read() -> Any:
        while True:
            event = await stream.read()
            if event is grpc.aio.EOF:
                return None
            if event.kind not in LIVE:
                delivered.append(event)

    try:
        await asyncio.wait_for(read(), within)
    except grpc.aio.AioRpcError as error:
        return error, delivered
    except TimeoutError:
        stream.cancel()  # still open
    return None, delivered


async def test_a_revoked_callers_stream_ends_before_a_rotated_secret_reaches_it(
    server: Harness,
) -> None:
    alice = await server.client_for("service", "alice")
    await alice.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    request = E.WatchExpiringRequest(deliver_tokens=True, kinds=[E.EVENT_KIND_ROTATED])
    stream = alice.handles.WatchExpiring(request)
    assert (await stream.read()).kind == E.EVENT_KIND_SNAPSHOT_COMPLETE

    await server.admin.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="alice"))
    await server.advance(timedelta(minutes=5))  # the device handle rotates
    error, delivered = await ended(stream)

    assert not any(e.token for e in delivered), "a rotated secret reached a revoked caller"
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked or expired" in (error.details() or "")
    refused = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="auth.failure")
    )
    assert [(e.resource_id, e.details["why"]) for e in refused.events] == [
        ("/keyturn.v1.HandleService/WatchExpiring", "CREDENTIALS_REVOKED")
    ]


async def test_an_idle_stream_of_a_revoked_caller_ends_at_its_next_check(
    server: Harness,
) -> None:
    auditor = await server.client_for("auditor", "watcher")
    stream = auditor.keys.WatchExpiring(E.WatchExpiringRequest())
    assert (await stream.read()).kind == E.EVENT_KIND_SNAPSHOT_COMPLETE

    await server.admin.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="watcher"))
    error, _ = await ended(stream, within=5)  # heartbeats every 0.2 s: checked within 1.2 s

    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_thiefs_idle_stream_ends_at_once_when_its_token_is_revoked(
    server: Harness,
) -> None:
    """With the default heartbeat (30 s) an idle stream was checked only when its next
    heartbeat went out: the thief's stream outlived the revocation by up to 30 s."""
    await server.restart(heartbeat_interval=timedelta(seconds=30))
    thief = await server.client_for("service", "thief")
    stream = thief.handles.WatchExpiring(E.WatchExpiringRequest(deliver_tokens=True))
    assert (await stream.read()).kind == E.EVENT_KIND_SNAPSHOT_COMPLETE

    await server.admin.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="thief"))
    error, delivered = await ended(stream, within=5)  # checked each second, idle or not

    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked or expired" in (error.details() or "") and not delivered
    refused = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="auth.failure")
    )
    assert [e.details["why"] for e in refused.events] == ["CREDENTIALS_REVOKED"]


async def test_key_watches_cannot_ask_for_tokens(server: Harness) -> None:
    stream = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(deliver_tokens=True))
    failed = await fails(collect(stream, 1))
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "deliver_tokens" in failed.violations


async def test_heartbeats_carry_the_latest_sequence(server: Harness) -> None:
    await make_events(server.admin, 3)
    stream = server.admin.keys.WatchExpiring(E.WatchExpiringRequest())
    marker = await stream.read()
    beat = await asyncio.wait_for(stream.read(), 5)
    assert beat.kind == E.EVENT_KIND_HEARTBEAT and beat.latest_sequence == 3
    assert marker.latest_sequence == 3
    stream.cancel()


async def test_a_heartbeat_never_counts_an_event_the_stream_has_not_sent_yet(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event published after the heartbeat's wait timed out, but before the stream went
    on, is sent before any heartbeat counts it. Every client checkpoints from heartbeats
    and drops what is at or before its checkpoint as a replay: a HEARTBEAT(latest=N) sent
    ahead of event N would lose N for it, and for anyone who resumes from that checkpoint."""
    raced = False
    offered = asyncio.Event()

    class RacingSubscription(watch.Subscription):
        def offer(self, event: watch.Event) -> None:
            super().offer(event)
            offered.set()

        async def wait(self, seconds: float) -> bool:
            nonlocal raced
            woken = await super().wait(seconds)
            if not woken and not raced:  # the timer fired; an event commits before we go on
                raced = True
                await make_events(server.admin, 1)
                await offered.wait()
            return woken

    monkeypatch.setattr(watch, "Subscription", RacingSubscription)
    assert server.app is not None and server.app._watch is not None
    request = WatchRequest(Subject.KEY, [], [], "", [], None, False)
    stream = server.app._watch.watch(Principal("admin", Role.ADMIN), request)
    sent: list[watch.StreamItem] = []

    async def until_an_event() -> None:
        async for item in stream:
            sent.append(item)
            if item.event is not None:
                return

    async with contextlib.aclosing(stream):
        await asyncio.wait_for(until_an_event(), 10)
    assert raced
    event = sent[-1].event
    assert event is not None
    counted = max(item.latest_sequence for item in sent)  # marker and heartbeats
    assert event.sequence > counted, [(item.kind.name, item.latest_sequence) for item in sent]


async def test_a_resumed_stream_says_how_often_it_beats_as_soon_as_its_replay_is_done(
    server: Harness,
) -> None:
    """A resumed stream has no SNAPSHOT_COMPLETE. Subscribers keep the interval they learnt
    before, so after a restart with a longer --heartbeat they would give up every resumed
    stream as silent before its first heartbeat, and never learn the new interval: the
    stream says it at once, with the checkpoint the replay reached."""
    await make_events(server.admin, 2)
    await server.restart(heartbeat_interval=timedelta(seconds=60))
    stream = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=1))
    replayed = await asyncio.wait_for(stream.read(), 5)
    beat = await asyncio.wait_for(stream.read(), 5)  # not 60 s later
    assert replayed.sequence == 2
    assert beat.kind == E.EVENT_KIND_HEARTBEAT and beat.latest_sequence == 2
    assert beat.heartbeat_interval.ToTimedelta() == timedelta(seconds=60)
    stream.cancel()


async def test_a_replay_passing_over_events_the_filter_drops_says_how_far_it_got(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filtered stream resumed far back scans the log (about 110 us an event here) and
    may send nothing for longer than its subscriber's silence limit (5 s with 1 s
    heartbeats: some 45,000 events). The subscriber would give it up and resume from the
    same point, for ever: each batch that matched nothing says how far the replay got."""
    monkeypatch.setattr(watch, "REPLAY_BATCH", 2)
    wanted = (await make_events(server.admin, 5))[-1]  # sequences 1-5; the 5th is watched
    stream = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=0, ids=[wanted]))
    sent: list[E.ExpiryEvent] = []
    while not sent or sent[-1].key.id != wanted:
        sent.append(await asyncio.wait_for(stream.read(), 5))
    stream.cancel()
    progress = [m.latest_sequence for m in sent if m.kind == E.EVENT_KIND_HEARTBEAT]
    assert progress == [2, 4] and sent[-1].sequence == 5
    assert all(m.heartbeat_interval.ToTimedelta() == timedelta(seconds=0.2) for m in sent[:-1])


async def test_the_snapshot_marker_and_heartbeats_say_how_often_heartbeats_come(
    server: Harness,
) -> None:
    """A subscriber that knows the interval can tell a stuck server from a quiet one."""
    stream = server.admin.handles.WatchExpiring(E.WatchExpiringRequest())
    marker = await stream.read()
    beat = await asyncio.wait_for(stream.read(), 5)
    assert marker.kind == E.EVENT_KIND_SNAPSHOT_COMPLETE
    assert beat.kind == E.EVENT_KIND_HEARTBEAT
    for message in (marker, beat):
        assert message.heartbeat_interval.ToTimedelta() == timedelta(seconds=0.2)
    stream.cancel()


async def test_a_slow_subscriber_is_closed_with_a_resume_point_and_others_are_not_held(
    server: Harness,
) -> None:
    await server.restart(watch_queue_size=8)
    # A client that reads nothing: a tiny flow-control window makes the server's writes
    # block almost at once, so its queue fills.
    slow_channel = grpc.aio.insecure_channel(
        server.address, options=[("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    )
    slow = Client(slow_channel, server.admin_token).keys.WatchExpiring(
        E.WatchExpiringRequest(resume_after=0), timeout=60
    )
    fast = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=0), timeout=60)
    # Both must be subscribed before the events are written: events found by replay
    # instead would never fill the slow one's queue.
    assert server.app is not None and server.app.services is not None
    hub = server.app.services.hub
    for _ in range(1000):
        if len(hub) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(hub) == 2

    loop = asyncio.get_running_loop()
    started = loop.time()
    await make_events(server.admin, 80)
    events = await collect(fast, 80)
    assert [e.sequence for e in events] == list(range(1, 81))
    assert loop.time() - started < 20

    received: list[int] = []
    failed = await fails(_drain(slow, received))
    assert failed.code == grpc.StatusCode.ABORTED
    assert failed.reason == "WATCH_OVERFLOW"
    resume_after = int(failed.metadata["resume_after"])
    assert received == list(range(1, resume_after + 1))
    again = server.admin.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=resume_after))
    rest = await collect(again, 80 - resume_after)
    assert received + [e.sequence for e in rest] == list(range(1, 81))
    fast.cancel()
    again.cancel()
    await slow_channel.close()


async def _drain(stream: Any, into: list[int]) -> None:
    while True:
        event = await stream.read()
        if event is grpc.aio.EOF:
            return
        if event.kind not in LIVE:
            into.append(event.sequence)


async def test_a_burst_of_subscribers_is_accepted(server: Harness) -> None:
    await server.restart(max_streams_per_caller=300)  # one principal opens them all
    streams = [server.admin.keys.WatchExpiring(E.WatchExpiringRequest()) for _ in range(300)]
    markers = await asyncio.gather(*[s.read() for s in streams])
    assert all(m.kind == E.EVENT_KIND_SNAPSHOT_COMPLETE for m in markers)
    assert server.app is not None and server.app.services is not None
    assert len(server.app.services.hub) == 300
    await make_events(server.admin, 1)
    received = await asyncio.gather(*[collect(s, 1) for s in streams])
    assert {r[0].sequence for r in received} == {1}
    for stream in streams:
        stream.cancel()


async def test_cancelling_streams_at_any_moment_never_hurts_the_server(tmp_path: Path) -> None:
    """Clients that hang up mid-stream (before, during and after live events) must leave
    the server process running and serving."""
    from tests.process import ServerProcess

    process = ServerProcess(tmp_path / "proc", "--heartbeat", "0.1s")
    await process.start()
    rng = random.Random(5)
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            client = Client(channel, process.token())

            async def hang_up() -> None:
                stream = client.keys.WatchExpiring(
                    E.WatchExpiringRequest(resume_after=0 if rng.random() < 0.5 else None)
                )
                for _ in range(rng.randint(0, 3)):
                    await stream.read()
                await asyncio.sleep(rng.uniform(0, 0.05))
                stream.cancel()

            for _ in range(10):
                await asyncio.gather(make_events(client, 3), *[hang_up() for _ in range(20)])
            assert process.process is not None and process.process.poll() is None
            health = await client.admin.GetHealth(admin_pb2.GetHealthRequest())
            assert health.health.status == admin_pb2.SERVING_STATUS_SERVING
        assert process.terminate(timeout=15) == 0
    finally:
        process.kill()


async def test_shutdown_ends_open_streams_at_once_with_a_resume_point(tmp_path: Path) -> None:
    from tests.process import ServerProcess

    process = ServerProcess(tmp_path / "proc")
    await process.start()
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            client = Client(channel, process.token())
            await make_events(client, 2)
            stream = client.keys.WatchExpiring(E.WatchExpiringRequest(resume_after=0))
            await collect(stream, 2)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert process.process is not None
            process.process.terminate()
            failed = await fails(_drain(stream, []))
            assert failed.code == grpc.StatusCode.UNAVAILABLE
            assert failed.reason == "SERVER_SHUTTING_DOWN"
            assert failed.metadata["resume_after"] == "2"
            assert await asyncio.to_thread(process.process.wait, 10) == 0
            assert loop.time() - started < 5
    finally:
        process.kill()
