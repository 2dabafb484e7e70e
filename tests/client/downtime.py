"""Taking the test server down and bringing it back on the same address, so that a
client connected before sees the same server again."""

from __future__ import annotations

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
