"""Soak: a mixed load with 1,000 open WatchExpiring streams for a while (CI: 2 minutes;
KEYTURN_SOAK_SECONDS for longer), sampling the server's RSS and open file descriptors.
No call may fail, no stream may drop, and neither resource may trend upwards.

    KEYTURN_SOAK_SECONDS=1800 .venv/bin/pytest tests/test_soak.py -s
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import events_pb2, handles_pb2, keys_pb2
from tests.harness import Client
from tests.process import ServerProcess

SECONDS = float(os.environ.get("KEYTURN_SOAK_SECONDS", "120"))
pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only, pytest.mark.timeout(SECONDS + 300)]
STREAMS = int(os.environ.get("KEYTURN_SOAK_STREAMS", "1000"))
SAMPLE_EVERY = max(1.0, SECONDS / 24)


def slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares growth per second."""
    xs, ys = zip(*samples, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def test_a_long_mixed_load_with_open_streams_leaks_nothing(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    # One principal holds every stream here: lift its cap (100 by default).
    server = ServerProcess(
        tmp_path / "data", "--heartbeat", "5s", "--max-streams-per-caller", str(STREAMS)
    )
    await server.start()
    calls = failures = events = 0
    dropped: list[str] = []
    stop = asyncio.Event()
    try:
        channels = [grpc.aio.insecure_channel(server.address) for _ in range(4)]
        clients = [Client(c, server.token()) for c in channels]

        async def watch(client: Client, n: int) -> None:
            nonlocal events
            stub = client.handles if n % 2 else client.keys
            stream = stub.WatchExpiring(events_pb2.WatchExpiringRequest(), timeout=None)
            try:
                async for _ in stream:
                    events += 1
            except grpc.aio.AioRpcError as error:
                if not stop.is_set():
                    dropped.append(error.code().name)
            else:
                if not stop.is_set():
                    dropped.append("ended by the server")

        async def load(client: Client, seed: int) -> None:
            nonlocal calls, failures
            rng = random.Random(seed)
            keys: list[str] = []
            handles: list[tuple[str, str]] = []
            while not stop.is_set():
                try:
                    choice = rng.random()
                    if choice < 0.1 or not keys:
                        key = await client.keys.GenerateKey(
                            keys_pb2.GenerateKeyRequest(type=rng.choice(["encryption", "session"]))
                        )
                        keys = ([*keys, key.key.id])[-50:]
                    elif choice < 0.2 or not handles:
                        issued = await client.handles.GenerateHandle(
                            handles_pb2.GenerateHandleRequest(type="session")
                        )
                        handles = ([*handles, (issued.handle.id, issued.token)])[-50:]
                    elif choice < 0.6:
                        await client.handles.ValidateHandle(
                            handles_pb2.ValidateHandleRequest(token=rng.choice(handles)[1])
                        )
                    elif choice < 0.7:
                        await client.keys.RotateKey(
                            keys_pb2.RotateKeyRequest(key_id=rng.choice(keys))
                        )
                    elif choice < 0.75:
                        handle_id, _ = handles.pop(rng.randrange(len(handles)))
                        await client.handles.RemoveHandle(
                            handles_pb2.RemoveHandleRequest(handle_id=handle_id)
                        )
                    else:
                        await client.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=20))
                    calls += 1
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                        failures += 1
                await asyncio.sleep(0.01)

        watchers = [asyncio.create_task(watch(clients[i % 4], i)) for i in range(STREAMS)]
        await asyncio.sleep(3)  # every stream open and past its snapshot
        workers = [asyncio.create_task(load(clients[i % 4], i)) for i in range(4)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        rss: list[tuple[float, float]] = []
        fds: list[tuple[float, float]] = []
        while loop.time() - started < SECONDS:
            await asyncio.sleep(SAMPLE_EVERY)
            t = loop.time() - started
            rss.append((t, server.rss_kib()))
            fds.append((t, server.open_fds()))
        stop.set()
        await asyncio.gather(*workers)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        for channel in channels:
            await channel.close()
    finally:
        stop.set()
        server.kill()

    steady = rss[len(rss) // 3 :]  # after warm-up (caches, first allocations)
    growth_kib = slope(steady) * SECONDS
    record_property(
        "figures",
        f"soak: {SECONDS:.0f} s, {STREAMS} open streams, {calls} calls, {failures} failed, "
        f"{events} events delivered; RSS {rss[0][1] / 1024:.1f} -> {rss[-1][1] / 1024:.1f} "
        f"MiB (trend {growth_kib / 1024:+.1f} MiB over the run after warm-up); open fds "
        f"{fds[0][1]:.0f} -> {fds[-1][1]:.0f}",
    )
    assert failures == 0 and not dropped
    assert calls > SECONDS * 5
    assert growth_kib < max(16 * 1024, 0.10 * steady[0][1]), "RSS keeps growing"
    assert fds[-1][1] <= fds[0][1] + 8, "file descriptors leak"
