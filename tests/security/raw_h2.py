"""A hand-made HTTP/2 client for protocol-level attacks: it sends what grpc clients never
would (calls without their message, resets, frames out of order) and reads the answers
as they come."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
from google.rpc import error_details_pb2, status_pb2

#: The messages of an empty protobuf request: no compression, length 0.
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"


@dataclass
class Outcome:
    """What one stream was answered."""

    status: str | None = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False

    @property
    def reason(self) -> str:
        """The google.rpc.ErrorInfo reason in the status details, if any."""
        details = self.headers.get("grpc-status-details-bin", "")
        status = status_pb2.Status.FromString(base64.b64decode(details + "=" * (-len(details) % 4)))
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason
        return ""

    @property
    def ended(self) -> bool:
        return self.status is not None or self.reset


class RawConnection:
    """One HTTP/2 connection to ``address`` (HOST:PORT), read in the background."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.outcomes: dict[int, Outcome] = {}
        self.terminated = False
        self._settings_seen = False
        #: Set whenever something arrives.
        self._changed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawConnection:
        host, port = self.address.rsplit(":", 1)
        self._reader, self._writer = await asyncio.open_connection(host, int(port))
        self.h2.initiate_connection()
        await self.flush()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()

    def headers(self, path: str, *, token: str = "", end_stream: bool = False) -> int:
        """Open a gRPC call to ``path`` (nothing sent until flush); its stream id."""
        stream = self.h2.get_next_available_stream_id()
        sent: list[tuple[str, str]] = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", self.address),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token:
            sent.append(("authorization", f"Bearer {token}"))
        self.h2.send_headers(stream, sent, end_stream=end_stream)
        self.outcomes[stream] = Outcome()
        return stream

    def message(self, stream: int, data: bytes = EMPTY_MESSAGE) -> None:
        self.h2.send_data(stream, data, end_stream=True)

    def reset(self, stream: int) -> None:
        self.h2.reset_stream(stream)

    async def flush(self) -> None:
        assert self._writer is not None
        self._writer.write(self.h2.data_to_send())
        await self._writer.drain()

    async def settled(self, within: float = 5.0) -> None:
        """Until the server's SETTINGS have arrived."""
        async with asyncio.timeout(within):
            while not self._settings_seen:
                self._changed.clear()
                await self._changed.wait()

    async def until(self, streams: Sequence[int], within: float = 10.0) -> list[Outcome]:
        """The outcomes of ``streams`` once every one has ended (or TimeoutError)."""
        async with asyncio.timeout(within):
            while not all(self.outcomes[s].ended for s in streams):
                self._changed.clear()
                await self._changed.wait()
        return [self.outcomes[s] for s in streams]

    async def _read(self) -> None:
        assert self._reader is not None
        while data := await self._reader.read(1 << 16):
            for event in self.h2.receive_data(data):
                self._take(event)
            self._changed.set()
            await self.flush()
        self.terminated = True
        self._changed.set()

    def _take(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            outcome = self.outcomes.setdefault(event.stream_id, Outcome())
            got = {str(k): str(v) for k, v in event.headers}
            outcome.headers.update(got)
            if "grpc-status" in got:
                outcome.status = got["grpc-status"]
                outcome.message = unquote(got.get("grpc-message", ""))
        elif isinstance(event, h2.events.StreamReset):
            self.outcomes.setdefault(event.stream_id, Outcome()).reset = True
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._settings_seen = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True
