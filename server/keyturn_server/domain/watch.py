"""WatchExpiring: the snapshot of what is inside its warning window, replay of the event
log from a resume point, and live fan-out, without a gap or a duplicate.

A subscriber registers with the hub *before* it reads the log, so an event committed
meanwhile is both in the log and in its queue; sequences tell the copies apart. Each
subscriber has a bounded queue: one that falls behind is closed with ABORTED and the
sequence to resume after, and never slows the others or the server.

The snapshot and the replay read the store in batches, as reports (in threads, a bounded
share per caller), and the store leaves out what the caller may not receive (another
owner's records, the other subject's events) before it decodes a row. Before, both read
every owner's rows on the event loop and filtered them here: a service with nothing of
its own stalled every caller for 0.44 s per stream it opened over 4,000 handles of
another owner in their warning window (tests/security/test_watch_reads.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime, timedelta

from keyturn_server.clock import Clock, to_micros
from keyturn_server.domain.access import MAX_PRINCIPAL, Permission, Principal
from keyturn_server.domain.errors import (
    Aborted,
    FieldViolation,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)
from keyturn_server.domain.events import Event, EventKind, Subject
from keyturn_server.domain.handle_lifecycle import HandleLifecycle
from keyturn_server.domain.handles import Handle
from keyturn_server.domain.keys import Key
from keyturn_server.domain.limits import raise_if, text
from keyturn_server.domain.repositories import Repository, Store

REPLAY_BATCH = 500
MAX_FILTER_VALUES = 100
#: What a caller at its stream cap is told to wait: streams end when callers close them.
STREAM_RETRY_AFTER = timedelta(seconds=5)


@dataclass(frozen=True)
class WatchFilter:
    subject: Subject
    types: frozenset[str] = frozenset()
    ids: frozenset[str] = frozenset()
    owner: str = ""
    kinds: frozenset[EventKind] = frozenset()
    #: A service asked for another owner's: it sees nothing of theirs (heartbeats only).
    blind: bool = False

    def matches(self, event: Event) -> bool:
        if self.blind or event.subject is not self.subject:
            return False
        if self.kinds and event.kind not in self.kinds:
            return False
        if self.types and event.subject_type not in self.types:
            return False
        if self.ids and event.subject_id not in self.ids:
            return False
        return not self.owner or event.owner == self.owner


@dataclass(frozen=True)
class StreamItem:
    """One message of a watch stream."""

    kind: EventKind
    event: Event | None = None
    #: A record sent as part of the initial snapshot.
    record: Key | Handle | None = None
    deadline: datetime | None = None
    token: str = ""
    latest_sequence: int = 0
    time: datetime | None = None
    #: On HEARTBEAT and SNAPSHOT_COMPLETE: how often an idle stream hears from us, so
    #: that a subscriber can tell a stuck server (silent, though its connection still
    #: answers pings) from a quiet one.
    heartbeat_interval: timedelta | None = None


class Subscription:
    """One open watch: a bounded buffer of matching events and at most one waiter.

    Kept small on purpose (a deque and, while idle, one future): a server holds tens of
    thousands of these, and fan-out touches every one of them for every event.
    """

    __slots__ = ("buffer", "capacity", "closed", "filter", "overflowed", "waiter")

    def __init__(self, watch_filter: WatchFilter, capacity: int) -> None:
        self.filter = watch_filter
        self.capacity = capacity
        self.buffer: deque[Event] = deque()
        self.overflowed = False
        self.closed = False
        self.waiter: asyncio.Future[bool] | None = None

    def offer(self, event: Event) -> None:
        if self.overflowed or self.closed:
            return
        if len(self.buffer) >= self.capacity:
            self.overflowed = True
        else:
            self.buffer.append(event)
        self.wake()

    def close(self) -> None:
        self.closed = True
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None:
            _settle(self.waiter, True)

    async def wait(self, seconds: float) -> bool:
        """True when woken, False when ``seconds`` passed first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self.waiter = waiter
        timer = loop.call_later(seconds, _settle, waiter, False)
        try:
            return await waiter
        finally:
            timer.cancel()
            self.waiter = None


def _settle(waiter: asyncio.Future[bool], woken: bool) -> None:
    if not waiter.done():
        waiter.set_result(woken)


class EventHub:
    """Receives committed events (a store commit listener) and fans them out."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self.latest_sequence = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    def publish(self, events: list[Event]) -> None:
        if events:
            self.latest_sequence = max(self.latest_sequence, events[-1].sequence)
        for subscription in self._subscribers:
            for event in events:
                if subscription.filter.matches(event):
                    subscription.offer(event)

    def subscribe(self, watch_filter: WatchFilter, capacity: int) -> Subscription:
        subscription = Subscription(watch_filter, capacity)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def close_all(self) -> None:
        """Shutting down: every subscriber ends with its resume point."""
        for subscription in self._subscribers:
            subscription.close()


@dataclass(frozen=True)
class WatchRequest:
    subject: Subject
    types: list[str]
    ids: list[str]
    owner: str
    kinds: list[EventKind]
    resume_after: int | None
    deliver_tokens: bool


class WatchService:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        clock: Clock,
        handle_lifecycle: HandleLifecycle,
        heartbeat: timedelta,
        queue_size: int,
        max_streams_per_caller: int = 100,
    ) -> None:
        self._store = store
        self._hub = hub
        self._clock = clock
        self._handle_lifecycle = handle_lifecycle
        self.heartbeat = heartbeat
        self.queue_size = queue_size
        #: Open streams per principal: each costs ~25-30 KiB and a place in every
        #: fan-out, so one caller must not hold thousands (10,000 took 213 MiB).
        self.max_streams_per_caller = max_streams_per_caller
        self._open: dict[str, int] = {}
        self._closing = False

    def close(self) -> None:
        """Shutting down: every open stream ends with UNAVAILABLE and its resume point."""
        self._closing = True
        self._hub.close_all()

    def _filter(self, principal: Principal, request: WatchRequest) -> WatchFilter:
        violations: list[FieldViolation] = []
        for name, values in (("types", request.types), ("ids", request.ids)):
            if len(values) > MAX_FILTER_VALUES:
                violations.append(FieldViolation(name, f"at most {MAX_FILTER_VALUES} values"))
            for value in values:
                text(name, value, 64, violations)
        text("owner", request.owner, MAX_PRINCIPAL, violations)
        if request.deliver_tokens and request.subject is Subject.KEY:
            violations.append(
                FieldViolation("deliver_tokens", "only HandleService delivers tokens")
            )
        stream_only = {EventKind.HEARTBEAT, EventKind.SNAPSHOT_COMPLETE}
        if request.resume_after is not None and request.resume_after < 0:
            violations.append(FieldViolation("resume_after", "must not be negative"))
        raise_if(violations)
        owner = principal.owner_filter(request.owner)
        return WatchFilter(
            subject=request.subject,
            types=frozenset(request.types),
            ids=frozenset(request.ids),
            owner=owner or "",
            kinds=frozenset(k for k in request.kinds if k not in stream_only),
            blind=owner is None,
        )

    def watch(
        self, principal: Principal, request: WatchRequest
    ) -> AsyncGenerator[StreamItem, None]:
        """The stream ``request`` asks for. Rights, filters and the resume point are checked
        now, so that a refusal comes before the stream starts (an HTTP error rather than
        an event, for Server-Sent Events); the stream itself starts when iterated."""
        principal.require(Permission.WATCH)
        watch_filter = self._filter(principal, request)
        self._admit(principal.name)
        if request.resume_after is not None:
            self._check_resume(request.resume_after)
        return self._stream(principal, request, watch_filter)

    def _admit(self, name: str) -> None:
        """Refuse a stream past the caller's cap (checked again when the stream starts)."""
        held = self._open.get(name, 0)
        if held >= self.max_streams_per_caller:
            raise ResourceExhausted(
                f"{name!r} already has {held} open WatchExpiring streams "
                "(--max-streams-per-caller); close one, or watch more with one stream",
                reason="TOO_MANY_STREAMS",
                retry_after=STREAM_RETRY_AFTER,
                metadata={"limit": str(self.max_streams_per_caller)},
            )

    def _check_resume(self, last: int) -> int:
        """The latest sequence, when ``last`` is a resume point the log still covers."""
        reader = self._store.read()
        oldest, latest = reader.event_bounds()
        _require_retained(reader, last, oldest)
        if last > latest:
            raise OutOfRange(
                f"resume_after {last} is ahead of the event log (latest is {latest})",
                reason="RESUME_POINT_AHEAD",
                metadata={"latest_sequence": str(latest)},
            )
        return latest

    async def _stream(
        self, principal: Principal, request: WatchRequest, watch_filter: WatchFilter
    ) -> AsyncGenerator[StreamItem, None]:
        name = principal.name
        self._admit(name)
        self._open[name] = self._open.get(name, 0) + 1
        subscription = self._hub.subscribe(watch_filter, self.queue_size)
        try:
            # Checked again now that the subscription is in place: nothing is missed
            # between the log and the live part.
            if request.resume_after is not None:
                last = request.resume_after
                latest = self._check_resume(last)
                replay = self._replay(principal, request, watch_filter, last)
                async with contextlib.aclosing(replay) as replayed:
                    async for item in replayed:
                        last = item.event.sequence if item.event else item.latest_sequence
                        yield item
                last = max(last, latest)
                # A resumed stream has no SNAPSHOT_COMPLETE: this says at once how often it
                # beats, with the checkpoint the replay reached. Subscribers keep the interval
                # they learnt before; after a restart with a longer --heartbeat they would
                # give up every resumed stream as silent before its first heartbeat came.
                yield self._progress(last)
            else:
                latest = self._store.read().event_bounds()[1]
                snapshot = self._snapshot(name, watch_filter)
                async with contextlib.aclosing(snapshot) as snapshotted:
                    async for item in snapshotted:
                        yield item
                last = latest
                yield StreamItem(
                    EventKind.SNAPSHOT_COMPLETE,
                    latest_sequence=last,
                    time=self._clock.now(),
                    heartbeat_interval=self.heartbeat,
                )
            async with contextlib.aclosing(
                self._live(principal, request, subscription, last)
            ) as live:
                async for item in live:
                    yield item
        finally:
            self._hub.unsubscribe(subscription)
            left = self._open[name] - 1
            if left:
                self._open[name] = left
            else:
                del self._open[name]

    async def _replay(
        self, principal: Principal, request: WatchRequest, watch_filter: WatchFilter, after: int
    ) -> AsyncGenerator[StreamItem, None]:
        subject, owner = watch_filter.subject.value, watch_filter.owner
        while not watch_filter.blind:
            # The batch's read also checks that no event after ``after`` was pruned since
            # the last batch (the retention passed it while the caller read, or a server
            # started after a long stop prunes what it replays): the batch would skip it.
            batch = await self._store.report(
                functools.partial(_events_after, after, subject, owner), principal.name
            )
            matched = False
            for event in batch:
                if watch_filter.matches(event):
                    matched = True
                    yield self._item(principal, request, event)
            if len(batch) < REPLAY_BATCH:
                return
            after = batch[-1].sequence
            if not matched:
                # A filtered replay far back can scan for longer than a subscriber's
                # silence limit (about 110 us an event: 45,000 events pass the 5 s floor),
                # which would give it up and resume from the same point, again and again.
                yield self._progress(after)

    async def _snapshot(
        self, caller: str, watch_filter: WatchFilter
    ) -> AsyncGenerator[StreamItem, None]:
        now = self._clock.now()
        if watch_filter.blind or (
            watch_filter.kinds and EventKind.EXPIRING not in watch_filter.kinds
        ):
            return
        owner = watch_filter.owner
        cursor: tuple[int, str] | None = None
        while True:
            records = await self._store.report(
                functools.partial(_in_warning, watch_filter.subject, now, cursor, owner), caller
            )
            for record in records:
                if _snapshot_matches(watch_filter, record):
                    yield StreamItem(
                        EventKind.EXPIRING, record=record, deadline=_deadline_of(record), time=now
                    )
            if len(records) < REPLAY_BATCH:
                return
            last = records[-1]
            assert last.warn_time is not None
            cursor = (to_micros(last.warn_time), last.id)

    async def _live(
        self, principal: Principal, request: WatchRequest, subscription: Subscription, last: int
    ) -> AsyncGenerator[StreamItem, None]:
        heartbeat = self.heartbeat.total_seconds()
        buffer = subscription.buffer
        while True:
            if buffer:
                event = buffer.popleft()
                if event.sequence > last:
                    last = event.sequence
                    yield self._item(principal, request, event)
                continue
            if subscription.closed or self._closing:
                raise Unavailable(
                    f"the server is shutting down; reconnect with resume_after={last}",
                    reason="SERVER_SHUTTING_DOWN",
                    metadata={"resume_after": str(last)},
                )
            if subscription.overflowed:
                raise Aborted(
                    f"this subscriber fell {subscription.capacity} events behind and was "
                    f"closed; resume with resume_after={last}",
                    reason="WATCH_OVERFLOW",
                    metadata={"resume_after": str(last)},
                )
            # An event can be offered after the wait timed out but before this stream
            # goes on (its wake-up then finds the waiter settled): send it first. A
            # heartbeat counting it (latest_sequence) ahead of it would make a subscriber
            # that checkpoints from heartbeats drop it as a replay.
            if not await subscription.wait(heartbeat) and not buffer:
                yield StreamItem(
                    EventKind.HEARTBEAT,
                    latest_sequence=max(last, self._hub.latest_sequence),
                    time=self._clock.now(),
                    heartbeat_interval=self.heartbeat,
                )

    def _progress(self, checkpoint: int) -> StreamItem:
        """A HEARTBEAT saying that every matching event through ``checkpoint`` was sent."""
        return StreamItem(
            EventKind.HEARTBEAT,
            latest_sequence=checkpoint,
            time=self._clock.now(),
            heartbeat_interval=self.heartbeat,
        )

    def _item(self, principal: Principal, request: WatchRequest, event: Event) -> StreamItem:
        token = ""
        if (
            request.deliver_tokens
            and event.sealed_token is not None
            and event.owner == principal.name
            and isinstance(event.snapshot, Handle)
        ):
            token = (
                self._handle_lifecycle.open_delivered(
                    event.subject_id, event.snapshot.generation, event.sealed_token
                )
                or ""
            )
        return StreamItem(
            event.kind, event=event, deadline=event.deadline, token=token, time=event.time
        )


def _require_retained(reader: Repository, last: int, oldest: int | None = None) -> None:
    """OUT_OF_RANGE unless every event after ``last`` is still in the log."""
    floor = reader.sequence_floor()
    if last < floor:
        if oldest is None:
            oldest = reader.event_bounds()[0]
        raise OutOfRange(
            f"resume_after {last} is older than the event retention "
            f"(events through {floor} were pruned); start a new watch",
            reason="RESUME_POINT_EXPIRED",
            metadata={"oldest_sequence": str(oldest or floor + 1)},
        )


def _events_after(after: int, subject: str, owner: str, repo: Repository) -> list[Event]:
    batch = repo.events_after(after, REPLAY_BATCH, subject, owner)
    _require_retained(repo, after)
    return batch


def _in_warning(
    subject: Subject,
    now: datetime,
    after: tuple[int, str] | None,
    owner: str,
    repo: Repository,
) -> list[Key] | list[Handle]:
    if subject is Subject.KEY:
        return repo.keys_in_warning(now, REPLAY_BATCH, after, owner)
    return repo.handles_in_warning(now, REPLAY_BATCH, after, owner)


def _snapshot_matches(watch_filter: WatchFilter, record: Key | Handle) -> bool:
    if watch_filter.types and record.type not in watch_filter.types:
        return False
    if watch_filter.ids and record.id not in watch_filter.ids:
        return False
    return not watch_filter.owner or record.owner == watch_filter.owner


def _deadline_of(record: Key | Handle) -> datetime:
    if isinstance(record, Key):
        if record.next_rotation_time is not None:
            return min(record.next_rotation_time, record.expire_time)
        return record.expire_time
    return min(record.rotate_time, record.expire_time)
