"""A WatchExpiring subscription that outlives connections and server restarts.

It remembers the last sequence it saw (an event's ``sequence``, or the
``latest_sequence`` of a HEARTBEAT or SNAPSHOT_COMPLETE) and, when the stream breaks,
reconnects with ``resume_after`` set to it: the server replays what happened meanwhile,
so the caller sees every event once and in order. Reconnects wait a random time below a
cap of 1 s doubling up to 30 s (full jitter), at least as long as a RetryInfo asks; the
cap starts again from 1 s after any message. Codes that another try cannot fix
(``_policy.WATCH_ENDS_ON``) end the watch with their exception; closing the client ends
it quietly.

A server whose event loop is stuck still answers HTTP/2 pings (gRPC's C core does), so
keepalive never notices it. The server says how often it sends a HEARTBEAT
(``heartbeat_interval`` on HEARTBEAT and SNAPSHOT_COMPLETE); once the watch knows it, a
stream that brings no message at all for ``WATCH_SILENCE`` intervals is cancelled and
resumed like a dropped one. A server that does not say (an older one) is waited for as
long as it takes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import grpc

from keyturn import _policy
from keyturn._calls import cancelling
from keyturn._errors import KeyturnError, Unavailable, from_rpc_error
from keyturn._retry import Backoff, Draw, Sleep
from keyturn.v1 import events_pb2

#: Reconnect delays of a watch: below 1 s, 2 s, 4 s ... 30 s.
WATCH_BACKOFF = Backoff(initial=1.0, maximum=30.0, multiplier=2.0)


@dataclass(frozen=True)
class Silence:
    """How long a watch waits for the next message of any kind once the server said how
    often it sends heartbeats: ``heartbeats`` intervals, and never less than ``floor``
    seconds (a server configured for sub-second heartbeats, or one pausing for a
    moment under load, is not stuck)."""

    heartbeats: float = 3.0
    floor: float = 5.0

    def limit(self, interval: float | None) -> float | None:
        """Seconds of silence after which a stream is given up; None: no limit."""
        return None if interval is None else max(self.floor, self.heartbeats * interval)


#: Three heartbeat intervals, at least 5 s.
WATCH_SILENCE = Silence()

HEARTBEAT = events_pb2.EVENT_KIND_HEARTBEAT
SNAPSHOT_COMPLETE = events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE


class EventStream(Protocol):
    """One server stream of events (a grpc.aio call, or a fake in tests)."""

    def __aiter__(self) -> AsyncIterator[events_pb2.ExpiryEvent]: ...

    def cancel(self) -> bool: ...


OpenStream = Callable[[events_pb2.WatchExpiringRequest], EventStream]
OnRetry = Callable[[KeyturnError | None, float], None]


class Watch:
    """Async iterator of ExpiryEvent across reconnects. Snapshot items (``snapshot``
    true, sequence 0) and SNAPSHOT_COMPLETE come first on a fresh watch (again, should
    the very first connection break before SNAPSHOT_COMPLETE: there is no resume point
    yet); HEARTBEATs are passed on only when asked for. ``last_sequence`` is the resume
    point to persist."""

    def __init__(
        self,
        open_stream: OpenStream,
        request: events_pb2.WatchExpiringRequest,
        *,
        heartbeats: bool = False,
        backoff: Backoff = WATCH_BACKOFF,
        on_retry: OnRetry | None = None,
        silence: Silence = WATCH_SILENCE,
        closed: Callable[[], bool] = lambda: False,
        sleep: Sleep = asyncio.sleep,
        draw: Draw = random.random,
    ) -> None:
        self._open = open_stream
        self._closed = closed
        self._draw = draw
        self._request = request
        self._heartbeats = heartbeats
        self._backoff = backoff
        self._on_retry = on_retry
        self._silence = silence
        #: The server's heartbeat interval in seconds, once it said (kept across
        #: reconnects: a resumed stream says it only with its first heartbeat).
        self.heartbeat_interval: float | None = None
        self._sleep = sleep
        self.last_sequence: int | None = (
            request.resume_after if request.HasField("resume_after") else None
        )
        #: How many times the stream was opened again after a failure.
        self.reconnects = 0
        self._events = self._run()
        self._ending = False
        #: The wait for the next event, as a task of its own, so that aclose() from
        #: another task can end it without cancelling the reader's task.
        self._step: asyncio.Future[events_pb2.ExpiryEvent] | None = None

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> events_pb2.ExpiryEvent:
        if self._ending:
            raise StopAsyncIteration
        step = self._step = asyncio.ensure_future(anext(self._events))
        try:
            return await step
        except asyncio.CancelledError:
            if self._ending and not cancelling():  # aclose() ended the wait: the end
                raise StopAsyncIteration from None
            raise
        finally:
            self._step = None

    async def aclose(self) -> None:
        """Ends the watch and its stream, also while another task waits for an event
        (its ``async for`` then ends)."""
        self._ending = True
        step = self._step
        if step is not None:
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
        await self._events.aclose()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _next_request(self) -> events_pb2.WatchExpiringRequest:
        request = events_pb2.WatchExpiringRequest()
        request.CopyFrom(self._request)
        if self.last_sequence is not None:
            request.resume_after = self.last_sequence
        return request

    def _accept(self, event: events_pb2.ExpiryEvent) -> bool:
        """Moves the resume point; False for what the caller must not see (a replayed
        duplicate, or a heartbeat nobody asked for)."""
        if event.kind in (HEARTBEAT, SNAPSHOT_COMPLETE):
            self.last_sequence = max(self.last_sequence or 0, event.latest_sequence)
            interval = event.heartbeat_interval.ToTimedelta().total_seconds()
            self.heartbeat_interval = interval if interval > 0 else None
            return event.kind == SNAPSHOT_COMPLETE or self._heartbeats
        if event.sequence == 0:  # an item of the initial snapshot
            return True
        if self.last_sequence is not None and event.sequence <= self.last_sequence:
            return False
        self.last_sequence = event.sequence
        return True

    async def _run(self) -> AsyncGenerator[events_pb2.ExpiryEvent, None]:
        delays = self._backoff.delays(self._draw)
        while not self._closed():
            failure: KeyturnError | None = None
            wait_at_least = 0.0
            stream = self._open(self._next_request())
            messages = aiter(stream)
            try:
                while (event := await self._receive(messages)) is not None:
                    delays = self._backoff.delays(self._draw)  # a message resets the backoff
                    if self._accept(event):
                        yield event
            except _Silent as silent:
                failure = Unavailable(
                    str(silent), code=grpc.StatusCode.UNAVAILABLE, reason="HEARTBEAT_MISSED"
                )
            except asyncio.CancelledError:
                # How grpc ends the streams of a closed channel; the caller's own
                # cancellation of its task goes on up.
                if self._closed() and not cancelling():
                    return
                raise
            except grpc.aio.AioRpcError as error:
                if self._closed():
                    return
                failure = from_rpc_error(error)
                if error.code() in _policy.WATCH_ENDS_ON:
                    raise failure from error
                wait_at_least = _policy.retry_delay(error) or 0.0
            finally:
                stream.cancel()
            delay = max(next(delays), wait_at_least)
            if self._on_retry is not None:
                self._on_retry(failure, delay)
            await self._sleep(delay)
            self.reconnects += 1

    async def _receive(
        self, messages: AsyncIterator[events_pb2.ExpiryEvent]
    ) -> events_pb2.ExpiryEvent | None:
        """The stream's next message, None at its end; _Silent when the server, having
        said how often it sends heartbeats, sent nothing for too long."""
        limit = self._silence.limit(self.heartbeat_interval)
        try:
            async with asyncio.timeout(limit):
                return await anext(messages)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise _Silent(
                f"no message from the server in {limit:g} s (it sends a heartbeat every "
                f"{self.heartbeat_interval:g} s): giving up on the stream"
            ) from None


class _Silent(Exception):
    """A stream went silent for longer than its heartbeats allow."""
