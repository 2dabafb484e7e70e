"""Health and reflection, which need no token, with a cap on the streams each peer holds.

Their streaming calls (``grpc.health.v1.Health/Watch`` and reflection's
``ServerReflectionInfo``) stay open for as long as the client likes, and without a
caller there was no per-caller stream cap to stop them: 20,000 Health.Watch streams from
one unauthenticated host, over four connections, took the server from 72 to 521 MiB.
Now a peer (an IPv6 peer counted by its /64, as presenters are) holds at most
``--max-streams-per-caller`` of them at once, the cap an authenticated caller has for
WatchExpiring; past it a stream is refused RESOURCE_EXHAUSTED with RetryInfo. Many
addresses at once are the job of the network in front, as for connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from datetime import timedelta
from typing import Any

from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from keyturn_server.api.auth import peer_host
from keyturn_server.api.status import to_status
from keyturn_server.domain.errors import ResourceExhausted
from keyturn_server.domain.presenters import presenter_peer

#: What a peer at its cap is told to wait: its streams end when it closes them.
RETRY_AFTER = timedelta(seconds=5)


class PeerStreams:
    """Open streams by peer; a peer with none has no entry."""

    def __init__(self, per_peer: int) -> None:
        self.per_peer = per_peer
        self._open: dict[str, int] = {}

    def enter(self, context: Any) -> str | None:
        """The peer as counted, with one more stream; None when it is at its cap."""
        peer = presenter_peer(peer_host(context.peer() or ""))
        held = self._open.get(peer, 0)
        if held >= self.per_peer:
            return None
        self._open[peer] = held + 1
        return peer

    def leave(self, peer: str) -> None:
        left = self._open[peer] - 1
        if left:
            self._open[peer] = left
        else:
            del self._open[peer]

    async def refuse(self, context: Any) -> None:
        status = to_status(
            ResourceExhausted(
                f"this address already has {self.per_peer} open health or reflection "
                "streams; close one",
                reason="TOO_MANY_STREAMS",
                retry_after=RETRY_AFTER,
                metadata={"limit": str(self.per_peer)},
            )
        )
        await context.abort(status.code, status.details, status.trailing_metadata)


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """grpc.health.v1.Health, its Watch streams capped per peer."""

    def __init__(self, streams: PeerStreams) -> None:
        super().__init__()
        self._streams = streams

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        peer = self._streams.enter(context)
        if peer is None:
            await self._streams.refuse(context)
            return
        try:
            await super().Watch(request, context)
        finally:
            self._streams.leave(peer)


class ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc,name-defined]
    """Server reflection, its streams capped per peer."""

    def __init__(self, service_names: Iterable[str], streams: PeerStreams) -> None:
        super().__init__(service_names)
        self._streams = streams

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest],
        context: Any,
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        peer = self._streams.enter(context)
        if peer is None:
            await self._streams.refuse(context)
            return
        try:
            async for response in super().ServerReflectionInfo(request_iterator, context):
                yield response
        finally:
            self._streams.leave(peer)


def add_reflection(server: Any, service_names: Iterable[str], streams: PeerStreams) -> None:
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        ReflectionServicer(service_names, streams), server
    )
