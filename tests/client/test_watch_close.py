"""Closing a watch is the normal end of one. A `keyturn serve` process (out of process, so
that a crash is a failed test and not a crashed test run) keeps serving after many
clients have opened a watch and walked away from it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from keyturn import NO_RETRY, AsyncClient
from tests.harness import MASTER_KEY


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, str]]:
    data = tmp_path / "data"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyturn_server", "serve",
        "--data-dir", str(data), "--listen", "127.0.0.1:0", "--caller-rate-limit", "0",
        env={**os.environ, "MASTER_KEY": MASTER_KEY, "LOG_LEVEL": "info"},  # access log on
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    address = ""
    async with asyncio.timeout(30):
        while not address:
            line = (await process.stdout.readline()).decode()
            assert line, "the server exited before listening"
            if line.startswith("keyturn listening on "):
                address = line.split()[-1]
    drain = asyncio.ensure_future(process.stdout.read())  # logs must not fill the pipe
    try:
        yield process, address, (data / "admin.token").read_text().strip()
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
        await drain


async def test_the_server_keeps_serving_after_clients_close_their_watches(
    served: tuple[asyncio.subprocess.Process, str, str],
) -> None:
    process, address, token = served

    async def open_and_walk_away(client: AsyncClient, subject: Literal["keys", "handles"]) -> None:
        watch = client.watch_expiring(subject, resume_after=0 if subject == "keys" else None)
        await anext(watch)
        await watch.aclose()

    async def many_clients() -> None:
        for _ in range(4):  # each client also goes away at the end, with its channel
            async with AsyncClient(address, token=token, retry=NO_RETRY) as client:
                await client.generate_key("api")
                for _ in range(10):
                    await asyncio.gather(
                        *(open_and_walk_away(client, s) for s in ["keys", "handles"] * 10)
                    )

    storm = asyncio.ensure_future(many_clients())
    died = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait({storm, died}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(0.5)
        assert not died.done(), f"the server died (exit code {process.returncode})"
        await storm
    finally:
        for task in (storm, died):
            task.cancel()
        await asyncio.gather(storm, died, return_exceptions=True)
    async with AsyncClient(address, token=token, retry=NO_RETRY) as client:
        assert (await client.get_health()).health.version
