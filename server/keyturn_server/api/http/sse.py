"""Server-streaming RPCs (WatchExpiring) as Server-Sent Events, for ``curl -N`` and a
browser's EventSource.

- Each event is one ``data:`` line holding the proto3 JSON of the message, with
  ``id: <sequence>`` when it has one (SNAPSHOT_COMPLETE carries the sequence the live part
  starts after), so a reconnecting EventSource sends ``Last-Event-ID`` and resumes exactly
  where it stopped; ``resume_after`` in the query does the same for a first connection.
- Heartbeats are SSE comments, which EventSource ignores, followed by an ``id:`` line that
  moves the resume point of an idle subscriber without firing an event. The comment says
  how often they come (``every 30s``): three missed mean a stuck server.
- A refusal before the stream starts (bad filter, OUT_OF_RANGE resume point, no rights) is
  an ordinary HTTP error: the servicer announces acceptance with send_initial_metadata,
  and only then does the 200 response begin. A failure later (server shutting down, a
  subscriber too slow) ends the stream with ``event: error`` and the google.rpc.Status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from keyturn.v1 import events_pb2
from keyturn_server.api.guard import Guard, Refused, Unparsable
from keyturn_server.api.http import codec, numerals, protojson
from keyturn_server.api.http.caller import HttpCaller
from keyturn_server.api.http.jsonmap import error_document
from keyturn_server.api.http.responses import NO_STORE, SERVER, error_response
from keyturn_server.api.http.rules import Route
from keyturn_server.domain.errors import InvalidArgument

EVENT_STREAM = "text/event-stream"
#: How long a write may wait for a subscriber to read (its socket buffers are full)
#: before the connection is dropped; the subscriber resumes from its Last-Event-ID.
WRITE_STALL_SECONDS = 10.0
_HEARTBEAT = events_pb2.EVENT_KIND_HEARTBEAT
_SNAPSHOT_COMPLETE = events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE


class _StreamContext:
    """The servicer's ``send_initial_metadata`` starts the 200 response."""

    def __init__(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        self._request = request
        self._response = response

    async def send_initial_metadata(self, metadata: object) -> None:
        if not self._response.prepared:
            await self._response.prepare(self._request)


def resume_from_header(request: web.BaseRequest, message: Message) -> None:
    """``Last-Event-ID`` (sent by a reconnecting EventSource) sets ``resume_after``; it
    wins over the query parameter, which the EventSource repeats from its first URL."""
    last = request.headers.get("Last-Event-ID", "").strip()
    if not last or "resume_after" not in message.DESCRIPTOR.fields_by_name:
        return
    # resume_after is an int64: protobuf refuses a value past it with a ValueError.
    top = numerals.INT64[1]
    sequence = numerals.whole_number(last, top)
    if sequence is None:
        raise InvalidArgument(
            f"Last-Event-ID must be an event sequence, a whole number from 0 to {top}",
            field="Last-Event-ID",
        )
    message.resume_after = sequence  # type: ignore[attr-defined]


async def serve(
    request: web.BaseRequest,
    route: Route,
    message: Message | Unparsable,
    guard: Guard,
    caller: HttpCaller,
    behavior: Callable[..., Any],
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            **SERVER,
            "Content-Type": EVENT_STREAM,
            **NO_STORE,  # rotated tokens travel on it; no-cache let a cache keep them
            # Proxies that buffer (nginx) would hold events back.
            "X-Accel-Buffering": "no",
        }
    )
    context = _StreamContext(request, response)
    messages = guard.stream(route.rpc, caller, message, lambda m: behavior(m, context), "http")
    try:
        async with contextlib.aclosing(messages):
            async for item in messages:
                if not response.prepared:
                    await response.prepare(request)
                await _write(request, response.write(frame(item)))
    except Refused as refused:
        if not response.prepared:
            return error_response(refused.status)
        with contextlib.suppress(ConnectionError):
            await _write(request, response.write(error_frame(refused.status)))
    except ConnectionError:
        pass  # the subscriber went away (or stopped reading); the guard has recorded it
    if not response.prepared:  # an empty stream: still a valid (empty) event stream
        await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        await _write(request, response.write_eof())
    return response


async def _write(request: web.BaseRequest, writing: Awaitable[None]) -> None:
    """Send, or drop the connection of a subscriber that has read nothing for
    WRITE_STALL_SECONDS. Before, one that never read held its connection, megabytes of
    socket buffers and its handler for ever, and held every stop of the server past its
    grace period (ended by the stop watch, exit status 1)."""
    try:
        async with asyncio.timeout(WRITE_STALL_SECONDS):
            await writing
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("the subscriber stopped reading") from None


def frame(message: Message) -> bytes:
    """One SSE message for one streamed message."""
    if isinstance(message, events_pb2.ExpiryEvent):
        if message.kind == _HEARTBEAT:
            text = f": heartbeat, latest sequence {message.latest_sequence}"
            if message.HasField("heartbeat_interval"):
                # A resumed stream has no SNAPSHOT_COMPLETE to say how often these come,
                # and a client watching for a stuck server needs to know.
                text += f", every {message.heartbeat_interval.ToJsonString()}"
            lines = [text]
            if message.latest_sequence:
                lines.append(f"id: {message.latest_sequence}")
            return ("\n".join(lines) + "\n\n").encode()
        sequence = message.sequence or (
            message.latest_sequence if message.kind == _SNAPSHOT_COMPLETE else 0
        )
    else:
        sequence = 0
    data = codec.dumps(protojson.to_dict(message)).decode()
    head = f"id: {sequence}\n" if sequence else ""
    return f"{head}data: {data}\n\n".encode()


def error_frame(status: status_pb2.Status) -> bytes:
    data = codec.dumps(error_document(status)).decode()
    return f"event: error\ndata: {data}\n\n".encode()
