"""The README's lifecycle demo, on the wall clock: a custom handle type with second-long
durations warns, rotates (delivering the new secret to its owner) and expires by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2
from tests.harness import Client
from tests.process import ServerProcess

E = events_pb2


async def test_a_short_lived_handle_type_lives_its_whole_life_on_the_wall_clock(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            client = Client(channel, server.token())
            await client.admin.UpdateConfig(
                admin_pb2.UpdateConfigRequest(
                    config=admin_pb2.Config(
                        handle_types={
                            "blink": admin_pb2.HandleTypeConfig(
                                algorithm="sha256",
                                handle_length=32,
                                rotation_interval={"seconds": 2},
                                warning_threshold={"seconds": 1},
                                max_lifetime={"seconds": 5},
                                max_usage=10,
                            )
                        }
                    ),
                    update_mask={"paths": ["handle_types.blink"]},
                )
            )
            stream = client.handles.WatchExpiring(
                E.WatchExpiringRequest(types=["blink"], deliver_tokens=True), timeout=30
            )
            assert (await stream.read()).kind == E.EVENT_KIND_SNAPSHOT_COMPLETE
            issued = await client.handles.GenerateHandle(
                handles_pb2.GenerateHandleRequest(type="blink")
            )
            kinds, tokens = [], []
            while not kinds or kinds[-1] != "EXPIRED":
                event = await asyncio.wait_for(stream.read(), 10)
                kinds.append(E.EventKind.Name(event.kind).removeprefix("EVENT_KIND_"))
                if event.token:
                    tokens.append(event.token)
            stream.cancel()
            assert kinds == [
                "CREATED",
                "EXPIRING",
                "ROTATED",
                "EXPIRING",
                "ROTATED",
                "EXPIRING",
                "EXPIRED",
            ]
            assert len(tokens) == 2 and issued.token not in tokens
            handle = await client.handles.GetHandle(
                handles_pb2.GetHandleRequest(handle_id=issued.handle.id)
            )
            assert handle.generation == 3
    finally:
        server.kill()
