"""Taking the test server down and bringing it back on the same address, so that a
client connected before sees the same server again."""

from __future__ import annotations

import asyncio

from keyturn import AsyncClient
from tests.harness import Harness


async def stop(server: Harness) -> str:
    """Stops the server; returns the address to start it on again."""
    address = server.address
    await server.stop()
    return address


async def start(server: Harness, address: str) -> None:
    await server.start(listen=(address,))


async def restart_in_place(server: Harness) -> None:
    """Stops the server and starts it again on the same port with the same data."""
    await start(server, await stop(server))


async def reconnected(client: AsyncClient, within: float = 10) -> None:
    """Until ``client``'s channel is connected again. A restart slower than the client's
    first reconnection attempt (a watch retries after 1 s) leaves the channel in its
    reconnect backoff, where a call fails at once (UNAVAILABLE, connection refused) and
    only calls the API marks idempotent are retried: a test that creates something right
    after a restart waits for this first, as a caller using wait_for_ready would."""
    await asyncio.wait_for(client._channel.channel_ready(), within)
