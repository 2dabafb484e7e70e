"""Closing a client is the normal end of its work: calls in flight and calls made later fail
with keyturn.Cancelled, and a watch ends quietly. asyncio's own CancelledError never leaks
out of them: the caller would read it as its task having been cancelled (a TaskGroup, a
supervisor, ``except Exception`` all treat it so), and nobody cancelled it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import keyturn
from keyturn import AsyncClient
from keyturn.v1 import events_pb2
from tests.harness import Harness
from tests.process import free_port


@pytest.fixture
async def silent_address() -> AsyncIterator[str]:
    """An address that accepts connections and never answers (a hung server)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_call_in_flight_when_the_client_closes_fails_with_cancelled(
    silent_address: str,
) -> None:
    client = AsyncClient(silent_address, token="kt_unused")
    call = asyncio.ensure_future(client.get_key("key_" + "a" * 16, timeout=30))
    await asyncio.sleep(0.3)
    await client.close()
    async with asyncio.timeout(5):
        with pytest.raises(keyturn.Cancelled):
            await call
    assert not call.cancelled()


async def test_a_read_waiting_to_be_retried_ends_when_the_client_closes() -> None:
    hours = keyturn.RetryPolicy(keyturn.Backoff(initial=3600, maximum=3600))
    address = f"127.0.0.1:{free_port()}"
    client = AsyncClient(address, token="kt_unused", retry=hours, timeout=None)
    call = asyncio.ensure_future(client.get_key("key_" + "a" * 16))
    await asyncio.sleep(0.3)  # the first attempt failed (nothing listens): the retry waits
    await client.close()
    async with asyncio.timeout(2):
        with pytest.raises(keyturn.Cancelled):
            await call


async def test_a_call_after_close_fails_with_cancelled(server: Harness) -> None:
    client = AsyncClient(server.address, token=server.admin_token)
    await client.close()
    with pytest.raises(keyturn.Cancelled):
        await client.get_health()
    await client.close()  # closing again changes nothing


async def test_closing_the_client_ends_a_watch_reading_its_stream_quietly(
    server: Harness,
) -> None:
    client = AsyncClient(server.address, token=server.admin_token)
    watch = client.watch_expiring("keys")
    assert (await anext(watch)).kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE
    seen: list[events_pb2.ExpiryEvent] = []

    async def read() -> None:
        async for event in watch:
            seen.append(event)

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0.3)  # blocked on the stream
    await client.close()
    async with asyncio.timeout(5):
        await reader  # returns: no exception
    assert seen == [] and watch.reconnects == 0


async def test_cancelling_the_callers_own_task_still_cancels_it(server: Harness) -> None:
    async with AsyncClient(server.address, token=server.admin_token) as client:
        watch = client.watch_expiring("keys")
        assert (await anext(watch)).kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE
        reader = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.3)  # blocked on the stream
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader


async def test_a_watch_closed_by_another_task_ends_its_reader_quietly(server: Harness) -> None:
    """One task reads the watch, another ends it (a shutdown hook): the reader's loop
    returns, its task is not cancelled, and the client goes on working."""
    async with AsyncClient(server.address, token=server.admin_token) as client:
        watch = client.watch_expiring("keys")
        assert (await anext(watch)).kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE

        async def read() -> int:
            return len([event async for event in watch])

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0.3)  # blocked on the stream
        await watch.aclose()
        async with asyncio.timeout(5):
            assert await reader == 0
        with pytest.raises(StopAsyncIteration):
            await anext(watch)
        assert (await client.get_health()).health.version
