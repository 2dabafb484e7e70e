"""Calls whose request message has not arrived yet: a cap per peer and a deadline.

grpc.aio accepts a call when its HEADERS frame arrives and, for a unary or server-streaming
method, holds it (the call in grpc core, a task and its frames in Python) until the
request message comes, before any handler runs: nothing of Keyturn saw a call that never
sent it. 20,000 such calls from one host with no token (HEADERS, then nothing; or HEADERS
ending the stream without a message, which grpc.aio never answered at all) took the
server from 72 to 491 MiB, for as long as the connections stayed open.

So every such method is served as its client-streaming twin (the same frames on the
wire): the handler starts with the call and counts it against its peer (an IPv6 peer by
its /64, as presenters are) until the request is read. A peer holds at most its cap of
such calls: past it, its call that has waited longest is ended (RESOURCE_EXHAUSTED with
RetryInfo) to make room. A legitimate client's message follows its headers at once, so
the oldest waiting calls are those that never send one, and a caller sharing the
attacker's address (behind the same NAT or proxy) is still served; a burst of thousands
of stream opens on one channel (the fan-out benchmark) briefly has many calls waiting
for the event loop to read them, so the cap is generous (1,000 calls, ~20 MiB). A
request still missing after the deadline ends its call DEADLINE_EXCEEDED, and a call that
ends its stream without one is answered INVALID_ARGUMENT. A peer that reaches its cap is
logged once until it has no call waiting, not once per call. Many addresses at once are
the job of the network in front, as for connections.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any, TypeAlias

import grpc

from keyturn_server.api.auth import peer_host
from keyturn_server.api.status import to_status
from keyturn_server.domain.errors import InvalidArgument, KeyturnError, ResourceExhausted
from keyturn_server.domain.presenters import presenter_peer

log = logging.getLogger("keyturn.api")
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
#: What a peer at its cap is told to wait: its requests arrive or time out.
RETRY_AFTER = timedelta(seconds=1)
#: Stands for "ended to make room" where a message would be.
EVICTED = object()


class RequestArrivals:
    """Calls waiting for their request message, by peer; a peer with none has no entry."""

    def __init__(self, per_peer: int, within: timedelta) -> None:
        self.per_peer = per_peer
        self.within = within.total_seconds()
        #: Oldest first (dicts keep insertion order): the calls' tasks.
        self._waiting: dict[str, dict[asyncio.Task[Any], None]] = {}
        #: Calls ended to make room, whose cancellation is theirs to turn into a status.
        self._evicted: set[asyncio.Task[Any]] = set()
        #: Peers that reached their cap since they last had no call waiting: logged once.
        self._reported: set[str] = set()

    def waiting(self, peer: str) -> int:
        return len(self._waiting.get(peer, ()))

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` (unary or server-streaming) as its client-streaming twin, which
        receives its one request here; other handlers unchanged."""
        if handler.request_streaming:
            return handler
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        assert handler.unary_stream is not None
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def run(_requests: object, context: Any) -> Any:
            return await behavior(await self.receive(context), context)

        return run

    def _streaming(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(behavior):  # the reader-writer API (health's Watch)

            async def write(_requests: object, context: Any) -> None:
                await behavior(await self.receive(context), context)

            return write

        async def run(_requests: object, context: Any) -> AsyncIterator[Any]:
            async for message in behavior(await self.receive(context), context):
                yield message

        return run

    async def receive(self, context: Any) -> Any:
        """The call's one request message; ends the call when it cannot have one."""
        peer = presenter_peer(peer_host(context.peer() or ""))
        task = asyncio.current_task()
        assert task is not None
        waiting = self._waiting.setdefault(peer, {})
        if len(waiting) >= self.per_peer:
            self._evict(peer, waiting)
        waiting[task] = None
        try:
            async with asyncio.timeout(self.within):
                message = await context.read()
        except asyncio.CancelledError:
            if task not in self._evicted:
                raise  # the client went away, or the server stops
            self._evicted.discard(task)
            task.uncancel()
            message = EVICTED
        except TimeoutError:
            message = None
        finally:
            if waiting.pop(task, True) is None and not waiting:
                del self._waiting[peer]
                self._reported.discard(peer)
        if message is EVICTED:
            await _abort(
                context,
                ResourceExhausted(
                    f"this call's request message had not arrived when its address had "
                    f"{self.per_peer} such calls and opened another",
                    reason="TOO_MANY_WAITING_CALLS",
                    retry_after=RETRY_AFTER,
                    metadata={"limit": str(self.per_peer)},
                ),
            )
        if message is None:
            # A transport deadline, not a domain error: no details to carry.
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request message did not arrive within {self.within:g} s of the "
                "call's headers",
            )
        if message is grpc.aio.EOF:  # type: ignore[attr-defined]
            await _abort(
                context,
                InvalidArgument(
                    "the call ended its stream without a request message",
                    field="request",
                    reason="MISSING_REQUEST",
                ),
            )
        return message

    def _evict(self, peer: str, waiting: dict[asyncio.Task[Any], None]) -> None:
        """End the call of ``peer`` that has waited longest: a legitimate request arrives
        with its headers, so the oldest waiting calls are the ones that never will."""
        oldest = next(iter(waiting))
        del waiting[oldest]
        self._evicted.add(oldest)
        oldest.cancel()
        self._report(peer)

    def _report(self, peer: str) -> None:
        if peer in self._reported:
            return
        self._reported.add(peer)
        log.warning(
            "an address reached its cap of calls whose request message has not arrived; "
            "its oldest such calls are ended to make room for new ones",
            extra={"category": "security", "peer": peer, "limit": self.per_peer},
        )


async def _abort(context: Any, error: KeyturnError) -> None:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
