"""watch_expiring against the real server: snapshot, resume, and a server restart that
the caller does not notice, except that no event is lost and none comes twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

import keyturn
from keyturn import AsyncClient, Watch
from keyturn.v1 import events_pb2
from keyturn_server.domain.events import Subject
from tests.client import downtime
from tests.harness import Harness
from tests.process import ServerProcess, free_port

CREATED = events_pb2.EVENT_KIND_CREATED
ROTATED = events_pb2.EVENT_KIND_ROTATED
EXPIRING = events_pb2.EVENT_KIND_EXPIRING
SNAPSHOT_COMPLETE = events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE
HEARTBEAT = events_pb2.EVENT_KIND_HEARTBEAT


def logged_sequences(server: Harness, subject: Subject) -> list[int]:
    """The sequences of the server's durable event log for one subject."""
    assert server.app is not None
    events = server.app.store.read().events_after(0, 10_000)
    return [e.sequence for e in events if e.subject is subject]


class Collector:
    """Reads a watch in the background, as an application would."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.events: list[events_pb2.ExpiryEvent] = []
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for event in self.watch:
            self.events.append(event)

    @property
    def sequences(self) -> list[int]:
        return [e.sequence for e in self.events if e.sequence]

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(20):
            while not done():
                if self._task.done():
                    self._task.result()  # raise what ended the watch
                    raise AssertionError("the watch ended")
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task
        await self.watch.aclose()


async def test_a_fresh_watch_sends_the_snapshot_then_live_events(
    server: Harness, client: AsyncClient
) -> None:
    expiring = (await client.generate_key("encryption")).key
    await server.advance(timedelta(days=24))  # inside the 7-day warning of its rotation

    watch = Collector(client.watch_expiring("keys"))
    await watch.until(lambda: any(e.kind == SNAPSHOT_COMPLETE for e in watch.events))
    snapshot, complete = watch.events[0], watch.events[-1]
    assert snapshot.snapshot and snapshot.kind == EXPIRING and snapshot.key.id == expiring.id
    assert complete.kind == SNAPSHOT_COMPLETE
    assert watch.watch.last_sequence == complete.latest_sequence > 0

    fresh = (await client.generate_key("signing")).key
    await watch.until(lambda: watch.events[-1].kind == CREATED)
    assert watch.events[-1].key.id == fresh.id
    assert watch.watch.last_sequence == watch.events[-1].sequence
    await watch.close()


async def test_a_watch_survives_a_server_restart_without_losing_or_repeating_an_event(
    server: Harness, client: AsyncClient
) -> None:
    watch = Collector(client.watch_expiring("keys"))
    await watch.until(lambda: watch.watch.last_sequence is not None)

    # Before the restart: seen live.
    before = [(await client.generate_key("encryption")).key.id for _ in range(3)]
    await client.rotate_key(before[0])
    await watch.until(lambda: len(watch.sequences) == 4)

    # Down and up again; nothing happens while it is down.
    await downtime.restart_in_place(server)
    await downtime.reconnected(client)

    # Right after the restart, before the watch is back (it waits 1 s): replayed.
    replayed = [(await client.generate_key("api")).key.id for _ in range(2)]
    await watch.until(lambda: len(watch.sequences) == 6)
    assert watch.watch.reconnects >= 1

    # Once it is back: live again.
    await client.remove_key(replayed[0])
    await client.generate_key("session")
    await watch.until(lambda: len(watch.sequences) == 8)
    await asyncio.sleep(0.2)  # a duplicate would arrive now

    assert watch.sequences == logged_sequences(server, Subject.KEY)
    assert [e.key.id for e in watch.events if e.kind == CREATED][:5] == [*before, *replayed]
    await watch.close()


async def test_a_watch_on_a_stuck_server_gives_up_its_silent_stream_and_resumes(
    tmp_path: Path,
) -> None:
    """The server's event loop blocks (SIGUSR1, tests/client/freezable_server.py) while its
    connection stays up: after 5 s without a heartbeat (it sends one every second) the
    watch cancels its stream and resumes, as after a dropped connection, instead of
    waiting for ever. Its new stream is served once the server comes back."""
    process = ServerProcess(tmp_path / "proc", "--heartbeat", "1s")
    process.prefix = [sys.executable, str(Path(__file__).with_name("freezable_server.py"))]
    process.env["KEYTURN_TEST_FREEZE_SECONDS"] = "8"
    await process.start()
    told: list[keyturn.KeyturnError | None] = []
    try:
        async with AsyncClient(process.address, token=process.token()) as client:
            watch = Collector(
                client.watch_expiring("keys", on_retry=lambda error, _: told.append(error))
            )
            await watch.until(lambda: any(e.kind == SNAPSHOT_COMPLETE for e in watch.events))
            before = (await client.generate_key("api")).key.id
            await watch.until(lambda: len(watch.sequences) == 1)

            os.kill(process.pid, signal.SIGUSR1)
            await watch.until(lambda: bool(told))
            assert told[0] is not None and told[0].reason == "HEARTBEAT_MISSED", told

            after = (await client.generate_key("api")).key.id  # once the server is back
            await watch.until(lambda: len(watch.sequences) == 2)
            assert [e.key.id for e in watch.events if e.kind == CREATED] == [before, after]
            assert watch.watch.reconnects >= 1
            await watch.close()
    finally:
        process.terminate()


async def test_resume_after_replays_exactly_what_came_after(
    server: Harness, client: AsyncClient
) -> None:
    _, second, third = [(await client.generate_key("api")).key for _ in range(3)]
    sequence_of_first = logged_sequences(server, Subject.KEY)[0]

    resumed = Collector(client.watch_expiring("keys", resume_after=sequence_of_first))
    await resumed.until(lambda: len(resumed.events) == 2)
    assert [e.key.id for e in resumed.events] == [second.id, third.id]
    assert not any(e.snapshot or e.kind == SNAPSHOT_COMPLETE for e in resumed.events)
    await resumed.close()


async def test_a_resume_point_ahead_of_the_log_ends_the_watch(client: AsyncClient) -> None:
    watch = client.watch_expiring("keys", resume_after=1_000_000)
    with pytest.raises(keyturn.OutOfRange) as caught:
        await anext(watch)
    assert caught.value.reason == "RESUME_POINT_AHEAD"
    assert watch.reconnects == 0


async def test_closing_the_client_ends_a_watch_waiting_to_reconnect_at_once() -> None:
    """A watch between two attempts (here, no server at all) sleeps its backoff, up to
    30 s by default: closing its client ends the iteration then and there, not when that
    wait is over."""
    client = AsyncClient(f"127.0.0.1:{free_port()}", token="kt_unused")
    waiting = asyncio.Event()

    def on_retry(error: keyturn.KeyturnError | None, delay: float) -> None:
        if delay > 5:  # a wait long enough to tell an early end from its natural end
            waiting.set()

    hour = keyturn.Backoff(initial=3600, maximum=3600)
    reader = Collector(client.watch_expiring("keys", backoff=hour, on_retry=on_retry))
    async with asyncio.timeout(10):
        await waiting.wait()
    await client.close()
    async with asyncio.timeout(2):
        await reader._task  # ends quietly: the caller closed the client
    assert reader.events == []


async def test_a_watch_without_a_token_ends_at_once(server: Harness) -> None:
    async with AsyncClient(server.address) as anonymous:
        watch = anonymous.watch_expiring("handles")
        with pytest.raises(keyturn.Unauthenticated):
            await anext(watch)
        assert watch.reconnects == 0


async def test_keys_cannot_ask_for_delivered_tokens(client: AsyncClient) -> None:
    with pytest.raises(keyturn.InvalidArgument) as caught:
        await anext(client.watch_expiring("keys", deliver_tokens=True))
    assert [v.field for v in caught.value.field_violations] == ["deliver_tokens"]


async def test_the_owner_receives_the_new_secret_of_an_automatic_rotation(
    server: Harness,
) -> None:
    service = await server.client_for("service", "billing")
    async with AsyncClient(server.address, token=service.token) as billing:
        issued = await billing.generate_handle("session")
        watch = Collector(billing.watch_expiring("handles", kinds=["rotated"], deliver_tokens=True))
        await watch.until(lambda: watch.watch.last_sequence is not None)

        await server.advance(timedelta(hours=1, seconds=1))  # past its rotate_time

        await watch.until(lambda: any(e.kind == ROTATED for e in watch.events))
        rotated = next(e for e in watch.events if e.kind == ROTATED)
        assert rotated.handle.id == issued.handle.id and rotated.token
        assert (await billing.validate_handle(rotated.token)).validation.valid
        await watch.close()


async def test_a_watch_resumed_on_a_server_with_a_longer_heartbeat_is_not_given_up_as_silent(
    server: Harness,
) -> None:
    """A watch learnt a 0.2 s heartbeat (silence limit: the 5 s floor); the server comes back
    beating every 30 s. The resumed stream has no SNAPSHOT_COMPLETE: unless it says its new
    interval at once, the watch gives it up after 5 s of silence, and every stream after it,
    without ever hearing the new interval."""
    await server.restart(heartbeat_interval=timedelta(seconds=0.2))
    async with AsyncClient(server.address, token=server.admin_token) as client:
        given_up: list[str] = []
        watch = Collector(
            client.watch_expiring("keys", on_retry=lambda error, _: given_up.append(error.reason))
        )
        await watch.until(lambda: watch.watch.last_sequence is not None)
        address = await downtime.stop(server)
        await server.start(listen=(address,), heartbeat_interval=timedelta(seconds=30))
        await watch.until(lambda: watch.watch.reconnects >= 1)
        await asyncio.sleep(6)  # past the silence limit the watch learnt before
        assert "HEARTBEAT_MISSED" not in given_up, given_up
        key = (await client.generate_key("api")).key.id
        await watch.until(lambda: any(e.key.id == key for e in watch.events))
        await watch.close()


async def test_an_idle_watch_checkpoints_from_heartbeats(server: Harness) -> None:
    await server.restart(heartbeat_interval=timedelta(seconds=0.2))
    async with AsyncClient(server.address, token=server.admin_token) as client:
        await client.generate_key("api")
        watch = Collector(client.watch_expiring("handles", heartbeats=True))
        await watch.until(lambda: any(e.kind == HEARTBEAT for e in watch.events))
        heartbeat = next(e for e in watch.events if e.kind == HEARTBEAT)
        assert heartbeat.latest_sequence >= 1
        assert watch.watch.last_sequence == heartbeat.latest_sequence
        await watch.close()
