"""A flood of the largest requests the server takes (1 MiB plaintexts to Encrypt), from
callers without a valid token; and of the largest valid calls from one token.

gRPC receives a whole message before any handler runs, and the request was parsed before
its caller was authenticated: each one in flight held its bytes several times over (the
transport's buffer, the bytes handed to the parser, the parsed message), and glibc kept
what was freed. 256 such calls in flight took the server from 70 MiB to 1.7 GB, and it
stayed there; 1,024 to 2.5 GB: in a container with a memory limit, the kernel's OOM
killer ends the service for every caller. Now large requests in flight are held to a
byte budget (past it they are refused unparsed, RESOURCE_EXHAUSTED, before anything else
is done with them), and large buffers go back to the system once freed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import keys_pb2, keys_pb2_grpc
from keyturn_server.domain import limits
from tests.process import ServerProcess

FLOOD = 256
SECONDS = 5.0
LARGEST_VALID = b"x" * limits.MAX_DATA


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "with_token"),
    [(1024 * 1024 - 100, False), (limits.MAX_REQUEST - 200, False), (2 * limits.MAX_DATA, True)],
    ids=[
        "the old limit, 1 MiB, no token",
        "the new limit, no token",
        "the largest valid call, one token",  # served, not refused: what is held meanwhile
    ],
)
async def test_a_flood_of_large_requests_leaves_memory_bounded(
    tmp_path: Path, size: int, with_token: bool
) -> None:
    server = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await server.start()
    channels = [
        grpc.aio.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 4 << 20)]
        )
        for _ in range(9)
    ]
    try:
        stubs = [keys_pb2_grpc.KeyServiceStub(c) for c in channels]
        mine = stubs.pop()  # the owner's own connection
        owner = (("authorization", f"Bearer {server.token()}"),)
        key = (
            await mine.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"), metadata=owner)
        ).key
        before = rss_mib(server.pid)
        peak = before
        stop = time.monotonic() + SECONDS
        refused: dict[str, int] = {}
        sent = owner if with_token else (("authorization", "Bearer kt_at_not-a-token"),)
        half = b"x" * (size // 2)  # a plaintext and its associated data
        request = keys_pb2.EncryptRequest(key_id=key.id, plaintext=half, associated_data=half)
        answered = 0

        async def flood(n: int) -> None:
            nonlocal answered
            while time.monotonic() < stop:
                try:
                    await stubs[n % 8].Encrypt(request, metadata=sent, timeout=30)
                    answered += 1
                except grpc.aio.AioRpcError as error:
                    refused[error.code().name] = refused.get(error.code().name, 0) + 1

        async def watch() -> None:
            nonlocal peak
            while time.monotonic() < stop:
                peak = max(peak, rss_mib(server.pid))
                await asyncio.sleep(0.1)

        async def meanwhile() -> int:
            """A caller with small calls is served throughout."""
            served = 0
            while time.monotonic() < stop:
                await mine.GetKey(keys_pb2.GetKeyRequest(key_id=key.id), metadata=owner)
                served += 1
                await asyncio.sleep(0.2)
            return served

        *_, served = await asyncio.gather(watch(), *(flood(n) for n in range(FLOOD)), meanwhile())
        # The largest valid call goes through once the flood is over.
        sealed = await mine.Encrypt(
            keys_pb2.EncryptRequest(
                key_id=key.id, plaintext=LARGEST_VALID, associated_data=LARGEST_VALID
            ),
            metadata=owner,
        )
        assert len(sealed.ciphertext) > len(LARGEST_VALID)
        await asyncio.sleep(1)
        after = rss_mib(server.pid)
        print(
            f"large-request flood: {FLOOD} x {size // 1024} KiB in flight "
            f"{'with a valid' if with_token else 'without a'} token for {SECONDS:.0f} s "
            f"({answered} answered, {sum(refused.values())} refused: {refused}); RSS "
            f"{before:.0f} -> peak "
            f"{peak:.0f} -> {after:.0f} MiB"
        )
        if with_token:
            assert answered and not refused, refused
        else:
            assert set(refused) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}, refused
        assert served >= SECONDS  # answered within a second or so, while the flood went on
        assert peak - before < 512, (before, peak)
        assert after - before < 160, (before, after)
    finally:
        for channel in channels:
            await channel.close()
        server.terminate()
