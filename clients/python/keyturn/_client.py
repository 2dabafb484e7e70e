"""AsyncClient: one channel to a Keyturn server and a typed method per RPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import Literal, TypeAlias

from keyturn._admin import AdminCalls
from keyturn._calls import enum_value
from keyturn._handles import HandleCalls
from keyturn._keys import KeyCalls
from keyturn._retry import Backoff, RetryPolicy
from keyturn._transport import ChannelOptions, TLSLike, call_metadata, open_channel
from keyturn._watch import WATCH_BACKOFF, WATCH_SILENCE, EventStream, OnRetry, Silence, Watch
from keyturn.v1 import events_pb2

DEFAULT_ADDRESS = "127.0.0.1:50051"

EventKindLike: TypeAlias = "events_pb2.EventKind.ValueType | str"


class AsyncClient(KeyCalls, HandleCalls, AdminCalls):
    """Asyncio client of KeyService, HandleService and AdminService.

    Each method sends one RPC and returns its response message (``keyturn.v1``); a failed
    call raises a ``KeyturnError`` subclass. Calls the API marks idempotent (reads, and
    Encrypt, Sign, MAC...) are retried on UNAVAILABLE, and on RESOURCE_EXHAUSTED with a
    RetryInfo, following ``retry``; the others never are. Each call has one deadline,
    its ``timeout=`` or the client's, shared by all its attempts (clients/README.md).
    Use it as an async context manager, or call ``close()``::

        async with AsyncClient("127.0.0.1:50051", token=token) as client:
            created = await client.generate_key("encryption", user_id="user123")
            async for key in client.iter_keys(type="encryption"):
                print(key.id)
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        token: str | None = None,
        tls: TLSLike = None,
        *,
        timeout: float | None = 30.0,
        retry: RetryPolicy | None = None,
        channel_options: ChannelOptions = (),
    ) -> None:
        """``address`` is HOST:PORT; ``token`` the bearer token; ``tls`` None for TLS
        unless the address is loopback, True for TLS with the system's roots, a ``TLS``
        for a private CA or mutual TLS, False for plaintext to any address; ``timeout``
        the default deadline of each unary call in seconds, retries included (None:
        none); ``retry`` how calls the API marks idempotent are retried."""
        self.address = address
        metadata = call_metadata(token)  # a token that cannot be sent fails before any I/O
        self._channel = open_channel(address, tls, channel_options)
        self._closed = asyncio.Event()
        super().__init__(
            self._channel,
            metadata,
            timeout,
            retry or RetryPolicy(),
            closed=self._closed.is_set,
            pause=self._wait_unless_closed,
        )

    async def close(self) -> None:
        """Closes the channel: calls in flight and later calls fail with Cancelled, watches
        end quietly. Closing again does nothing."""
        self._closed.set()
        await self._channel.close(None)

    async def _wait_unless_closed(self, seconds: float) -> None:
        """A wait before a call's next attempt or a watch's reconnect, cut short when the
        client closes: the caller is not kept waiting (up to 30 s) for nothing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def watch_expiring(
        self,
        subject: Literal["keys", "handles"] = "keys",
        *,
        types: Iterable[str] = (),
        ids: Iterable[str] = (),
        owner: str = "",
        kinds: Iterable[EventKindLike] = (),
        resume_after: int | None = None,
        deliver_tokens: bool = False,
        heartbeats: bool = False,
        backoff: Backoff = WATCH_BACKOFF,
        on_retry: OnRetry | None = None,
        silence: Silence = WATCH_SILENCE,
    ) -> Watch:
        """Expiry warnings, rotations, removals and anomalies of keys or handles, as an
        async iterator that reconnects and resumes by itself (see ``Watch``)::

            async with client.watch_expiring("handles", types=["workflow"]) as watch:
                async for event in watch:
                    ...

        ``resume_after`` continues from a sequence saved earlier (``watch.last_sequence``);
        without it the stream starts with the items already inside their warning window.
        ``deliver_tokens`` (handles) carries the new secret of automatically rotated
        handles the caller owns. ``on_retry(error, delay)`` is told of each reconnect.
        ``silence``: how long a stream may bring nothing once the server said how often it
        sends heartbeats (3 intervals, at least 5 s) before it is given up and resumed.
        """
        if subject not in ("keys", "handles"):
            raise ValueError(f"subject is 'keys' or 'handles', not {subject!r}")
        request = events_pb2.WatchExpiringRequest(
            types=list(types),
            ids=list(ids),
            owner=owner,
            kinds=[enum_value(events_pb2.EventKind, "EVENT_KIND", k) for k in kinds],
            deliver_tokens=deliver_tokens,
        )
        if resume_after is not None:
            request.resume_after = resume_after
        method = self._keys.WatchExpiring if subject == "keys" else self._handles.WatchExpiring

        def open_stream(request: events_pb2.WatchExpiringRequest) -> EventStream:
            return method(request, metadata=self._metadata)

        return Watch(
            open_stream,
            request,
            heartbeats=heartbeats,
            backoff=backoff,
            on_retry=on_retry,
            silence=silence,
            closed=self._closed.is_set,
            sleep=self._pause,
        )
