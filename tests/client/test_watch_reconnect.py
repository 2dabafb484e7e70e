"""The reconnect policy of a Watch, driven by scripted streams instead of a server so
that its delays can be read exactly (the random draw of the jitter is pinned to its top):
caps of 1 s doubling to 30 s, back to 1 s after a message, and no reconnect for failures
that another try cannot fix, and a stream given up once it is silent for longer than
the server's heartbeats allow. tests/client/test_policy_table.py runs the shared cases of
every client over a real channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

import keyturn
from keyturn import Watch
from keyturn._watch import WATCH_SILENCE, EventStream, Silence
from keyturn.v1 import events_pb2

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def at_the_cap() -> float:
    """The jitter's random draw at its top: each wait is its cap."""
    return 1.0


def event(sequence: int, kind: int = events_pb2.EVENT_KIND_CREATED) -> events_pb2.ExpiryEvent:
    return events_pb2.ExpiryEvent(sequence=sequence, kind=kind)  # type: ignore[arg-type]


def heartbeat(latest: int) -> events_pb2.ExpiryEvent:
    return events_pb2.ExpiryEvent(kind=events_pb2.EVENT_KIND_HEARTBEAT, latest_sequence=latest)


def complete(latest: int, every: float | None = None) -> events_pb2.ExpiryEvent:
    """SNAPSHOT_COMPLETE, saying that heartbeats come ``every`` seconds (None: not saying,
    as servers before heartbeat_interval)."""
    marker = events_pb2.ExpiryEvent(
        kind=events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE, latest_sequence=latest
    )
    if every is not None:
        marker.heartbeat_interval.FromTimedelta(timedelta(seconds=every))
    return marker


def failure(code: grpc.StatusCode, retry_after: timedelta | None = None) -> grpc.aio.AioRpcError:
    trailer = grpc.aio.Metadata()
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(retry_after)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status = status_pb2.Status(code=code.value[0], message="fail", details=[detail])
        trailer = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailer, "fail")


@dataclass
class Connection:
    """What one connection sends before it ends (None: a clean end of stream), or before
    it goes silent for ever with its connection up (a server whose event loop is stuck)."""

    events: list[events_pb2.ExpiryEvent] = field(default_factory=list)
    ends_with: grpc.aio.AioRpcError | None = None
    silent: bool = False


class ScriptedStream:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.cancelled = False

    async def _events(self) -> AsyncIterator[events_pb2.ExpiryEvent]:
        for item in self.connection.events:
            yield item
        if self.connection.silent:
            await asyncio.Event().wait()
        if self.connection.ends_with is not None:
            raise self.connection.ends_with

    def __aiter__(self) -> AsyncIterator[events_pb2.ExpiryEvent]:
        return self._events()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class ScriptedServer:
    """Answers each (re)connection with the next scripted one and records requests."""

    def __init__(self, *connections: Connection) -> None:
        self.connections = list(connections)
        self.requests: list[events_pb2.WatchExpiringRequest] = []
        self.streams: list[ScriptedStream] = []
        self.sleeps: list[float] = []

    def open(self, request: events_pb2.WatchExpiringRequest) -> EventStream:
        self.requests.append(request)
        if not self.connections:
            raise AssertionError("the watch connected more often than scripted")
        stream = ScriptedStream(self.connections.pop(0))
        self.streams.append(stream)
        return stream

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def watch(self, **kwargs: object) -> Watch:
        return Watch(
            self.open,
            events_pb2.WatchExpiringRequest(),
            sleep=self.sleep,
            draw=at_the_cap,
            **kwargs,  # type: ignore[arg-type]
        )

    def resume_points(self) -> list[int | None]:
        return [r.resume_after if r.HasField("resume_after") else None for r in self.requests]


async def take(watch: Watch, count: int) -> list[events_pb2.ExpiryEvent]:
    return [await anext(watch) for _ in range(count)]


async def test_delays_double_from_one_second_up_to_thirty() -> None:
    down = [Connection(ends_with=failure(UNAVAILABLE)) for _ in range(7)]
    server = ScriptedServer(*down, Connection([event(1)]))

    assert [e.sequence for e in await take(server.watch(), 1)] == [1]
    assert server.sleeps == [1, 2, 4, 8, 16, 30, 30]


async def test_a_message_resets_the_delay_to_one_second() -> None:
    server = ScriptedServer(
        Connection(ends_with=failure(UNAVAILABLE)),
        Connection(ends_with=failure(UNAVAILABLE)),
        Connection([event(1)], ends_with=failure(UNAVAILABLE)),
        Connection(ends_with=failure(UNAVAILABLE)),
        Connection([event(2)]),
    )
    assert [e.sequence for e in await take(server.watch(), 2)] == [1, 2]
    assert server.sleeps == [1, 2, 1, 2]


async def test_reconnects_resume_after_the_last_sequence_seen_and_drop_replays() -> None:
    server = ScriptedServer(
        Connection(
            [
                events_pb2.ExpiryEvent(
                    kind=events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE, latest_sequence=4
                ),
                event(5),
                event(6),
            ],
            ends_with=failure(grpc.StatusCode.INTERNAL),
        ),
        Connection([event(6), event(7), heartbeat(9)]),  # 6 again: already seen
        Connection([event(10)]),
    )
    watch = server.watch()
    seen = await take(watch, 5)

    assert [(e.kind, e.sequence) for e in seen] == [
        (events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE, 0),
        (events_pb2.EVENT_KIND_CREATED, 5),
        (events_pb2.EVENT_KIND_CREATED, 6),
        (events_pb2.EVENT_KIND_CREATED, 7),
        (events_pb2.EVENT_KIND_CREATED, 10),
    ]
    assert server.resume_points() == [None, 6, 9]
    assert watch.reconnects == 2 and watch.last_sequence == 10
    assert all(stream.cancelled for stream in server.streams[:2])


async def test_a_clean_end_of_stream_is_followed_by_a_reconnect() -> None:
    server = ScriptedServer(Connection([event(3)]), Connection([event(4)]))
    assert [e.sequence for e in await take(server.watch(), 2)] == [3, 4]
    assert server.resume_points() == [None, 3]


async def test_a_server_asking_for_patience_is_given_its_retry_after() -> None:
    server = ScriptedServer(
        Connection(ends_with=failure(grpc.StatusCode.RESOURCE_EXHAUSTED, timedelta(seconds=7))),
        Connection([event(1)]),
    )
    await take(server.watch(), 1)
    assert server.sleeps == [7]


async def test_heartbeats_are_passed_on_only_when_asked_for() -> None:
    script = [heartbeat(3), event(4)]
    quiet = ScriptedServer(Connection(list(script)))
    assert [e.sequence for e in await take(quiet.watch(), 1)] == [4]
    chatty = ScriptedServer(Connection(list(script)))
    kinds = [e.kind for e in await take(chatty.watch(heartbeats=True), 2)]
    assert kinds == [events_pb2.EVENT_KIND_HEARTBEAT, events_pb2.EVENT_KIND_CREATED]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, keyturn.InvalidArgument),
        (grpc.StatusCode.PERMISSION_DENIED, keyturn.PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, keyturn.Unauthenticated),
        (grpc.StatusCode.OUT_OF_RANGE, keyturn.OutOfRange),
        (grpc.StatusCode.NOT_FOUND, keyturn.NotFound),
        (grpc.StatusCode.UNIMPLEMENTED, keyturn.ServerError),
    ],
    ids=lambda value: value.name if isinstance(value, grpc.StatusCode) else "",
)
async def test_failures_that_a_retry_cannot_fix_end_the_watch(
    code: grpc.StatusCode, error: type[keyturn.KeyturnError]
) -> None:
    server = ScriptedServer(Connection([event(1)], ends_with=failure(code)))
    watch = server.watch()
    assert (await anext(watch)).sequence == 1
    with pytest.raises(error):
        await anext(watch)
    assert server.sleeps == [] and watch.reconnects == 0


async def test_the_caller_is_told_of_each_reconnect() -> None:
    told: list[tuple[str, float]] = []
    server = ScriptedServer(
        Connection(ends_with=failure(UNAVAILABLE)), Connection(), Connection([event(1)])
    )
    watch = Watch(
        server.open,
        events_pb2.WatchExpiringRequest(),
        sleep=server.sleep,
        draw=at_the_cap,
        on_retry=lambda error, delay: told.append((error.code.name if error else "END", delay)),
    )
    await take(watch, 1)
    assert told == [("UNAVAILABLE", 1.0), ("END", 2.0)]


async def test_the_jitter_draws_each_wait_below_its_cap() -> None:
    down = [Connection(ends_with=failure(UNAVAILABLE)) for _ in range(3)]
    server = ScriptedServer(*down, Connection([event(1)]))
    watch = Watch(
        server.open, events_pb2.WatchExpiringRequest(), sleep=server.sleep, draw=lambda: 0.25
    )
    await take(watch, 1)
    assert server.sleeps == [0.25, 0.5, 1.0]


async def test_a_cancelled_stream_reconnects_unless_the_client_was_closed() -> None:
    closed = False
    server = ScriptedServer(
        Connection([event(1)], ends_with=failure(grpc.StatusCode.CANCELLED)),
        Connection([event(2)], ends_with=failure(grpc.StatusCode.CANCELLED)),
    )
    watch = Watch(
        server.open,
        events_pb2.WatchExpiringRequest(),
        sleep=server.sleep,
        closed=lambda: closed,
    )
    assert (await anext(watch)).sequence == 1
    assert (await anext(watch)).sequence == 2  # a CANCELLED nobody asked for: reconnect
    closed = True
    with pytest.raises(StopAsyncIteration):
        await anext(watch)
    assert watch.reconnects == 1


#: Heartbeats every 50 ms, given up after 200 ms of silence: the policy's shape, faster.
QUICK = Silence(heartbeats=3, floor=0.2)


@pytest.mark.parametrize(
    ("interval", "limit"),
    [(None, None), (0.1, 5.0), (1.0, 5.0), (2.0, 6.0), (30.0, 90.0)],
    ids=["not-said", "sub-second", "1s", "2s", "30s-default"],
)
def test_a_stream_is_given_up_after_three_heartbeats_of_silence_and_never_sooner_than_5s(
    interval: float | None, limit: float | None
) -> None:
    assert WATCH_SILENCE.limit(interval) == limit


async def test_a_stream_silent_past_its_heartbeats_is_given_up_and_resumed() -> None:
    told: list[tuple[str, str]] = []
    server = ScriptedServer(
        Connection([complete(10, every=0.05), event(11)], silent=True),
        Connection([event(12)], silent=True),
    )
    watch = server.watch(
        silence=QUICK, on_retry=lambda error, _: told.append((error.code.name, error.reason))
    )
    async with asyncio.timeout(5):
        seen = await take(watch, 3)
    assert [e.sequence or e.latest_sequence for e in seen] == [10, 11, 12]
    assert server.resume_points() == [None, 11]
    assert server.streams[0].cancelled
    assert told == [("UNAVAILABLE", "HEARTBEAT_MISSED")]
    assert server.sleeps == [1.0]  # the stream had delivered: the backoff started again


async def test_a_resumed_stream_that_says_nothing_is_given_up_too() -> None:
    """A resumed stream sends no SNAPSHOT_COMPLETE, and a stuck server sends nothing at
    all: the interval heard before still holds."""
    server = ScriptedServer(
        Connection([complete(10, every=0.05)], silent=True),
        Connection([], silent=True),
        Connection([event(11)]),
    )
    watch = server.watch(silence=QUICK)
    async with asyncio.timeout(5):
        seen = await take(watch, 2)
    assert [e.sequence or e.latest_sequence for e in seen] == [10, 11]
    assert server.resume_points() == [None, 10, 10]


@pytest.mark.parametrize(
    "connections",
    [
        [Connection([complete(10)], silent=True)],
        [
            Connection([complete(10, every=0.05)], ends_with=failure(UNAVAILABLE)),
            Connection([heartbeat(10)], silent=True),  # a replica that does not say
        ],
    ],
    ids=["never-said", "said-then-not"],
)
async def test_a_server_that_does_not_say_how_often_it_beats_is_waited_for(
    connections: list[Connection],
) -> None:
    server = ScriptedServer(*connections)
    watch = server.watch(silence=QUICK)
    assert (await anext(watch)).latest_sequence == 10
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1):
            await anext(watch)
    assert len(server.requests) == len(connections)
