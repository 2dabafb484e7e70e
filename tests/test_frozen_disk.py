"""A disk that stops answering under the embedded store: the real server on a filesystem of
its own (ext4 on a loop device), frozen with fsfreeze while changes are made, as a hung
network volume or a failing device holds every fsync.

Nothing fails, so nothing used to say so: health answered SERVING and the log said
nothing while every change waited, and GetHealth itself hung on its counts past the
caller's deadline. Now a commit that waits too long makes health NOT_SERVING with the
reason and how long, GetHealth answers, the log says so once and once when it is over,
and health is SERVING again without a restart.

Needs root (mount, losetup, fsfreeze); without it the test is skipped, unless
KEYTURN_REQUIRE_ALL is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import admin_pb2, keys_pb2
from keyturn_server.domain.health import COUNT_WITHIN
from keyturn_server.store.stall import STALL_AFTER
from tests.harness import Client, health_becomes
from tests.process import ServerProcess

pytestmark = pytest.mark.sqlite_only


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.fixture
def freezable_disk(tmp_path: Path) -> Iterator[Path]:
    image = tmp_path / "disk.img"
    with image.open("wb") as out:
        out.truncate(32 << 20)
    attached = _run("losetup", "--find", "--show", str(image))
    device = attached.stdout.strip()
    mount = tmp_path / "disk"
    mount.mkdir()
    made = attached.returncode == 0 and _run("mkfs.ext4", "-q", device).returncode == 0
    mounted = made and _run("mount", device, str(mount)).returncode == 0
    if not mounted:
        if attached.returncode == 0:
            _run("losetup", "-d", device)
        why = f"a filesystem to freeze needs root and a loop device: {attached.stderr.strip()}"
        if os.environ.get("KEYTURN_REQUIRE_ALL"):
            pytest.fail(f"{why} (KEYTURN_REQUIRE_ALL is set)")
        pytest.skip(why)
    try:
        yield mount
    finally:
        _run("fsfreeze", "--unfreeze", str(mount))
        _run("umount", "-l", str(mount))
        _run("losetup", "-d", device)


@contextlib.contextmanager
def frozen(mount: Path) -> Iterator[None]:
    assert _run("fsfreeze", "--freeze", str(mount)).returncode == 0
    try:
        yield
    finally:
        _run("fsfreeze", "--unfreeze", str(mount))


async def test_a_stalled_disk_is_not_serving_said_once_and_serving_again_when_it_answers(
    freezable_disk: Path, tmp_path: Path
) -> None:
    server = ServerProcess(freezable_disk / "data")
    server.log = tmp_path / "server.log"  # the log is not on the disk that stalls
    server.stdout = tmp_path / "server.out"
    server.env["LOG_LEVEL"] = "info"
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            client = Client(channel, server.token())
            health = health_pb2_grpc.HealthStub(channel)
            key = (await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))).key
            with frozen(freezable_disk):
                waiting = [
                    asyncio.ensure_future(
                        client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
                    )
                    for _ in range(3)
                ]
                assert await health_becomes(
                    health, health_pb2.HealthCheckResponse.NOT_SERVING, within=STALL_AFTER + 15
                ), "still SERVING while every change waits for the disk"
                # Reads still answer, and so does the health report, with why.
                read = await client.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
                assert read.id == key.id
                asked = time.monotonic()
                report = await client.admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=15)
                assert time.monotonic() - asked < COUNT_WITHIN + 3  # its counts at once
                assert report.health.status == admin_pb2.SERVING_STATUS_NOT_SERVING
                store = {c.name: c for c in report.health.components}["store"]
                assert store.status == admin_pb2.SERVING_STATUS_NOT_SERVING
                assert "waited" in store.reasons[0] and "disk" in store.reasons[0], store
                assert not any(w.done() for w in waiting)
                await asyncio.sleep(2)  # more health checks: still said once
            for made in await asyncio.gather(*waiting):
                assert made.key.id
            assert await health_becomes(health, health_pb2.HealthCheckResponse.SERVING), (
                "still NOT_SERVING after the disk answered again"
            )
    finally:
        server.terminate()
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    stalled = [line for line in lines if line["msg"].startswith("a store commit is waiting")]
    back = [line for line in lines if line["msg"].startswith("the store's commit came back")]
    assert len(stalled) == 1 and stalled[0]["waited_seconds"] >= STALL_AFTER, stalled
    assert len(back) == 1 and back[0]["stalled_seconds"] >= STALL_AFTER, back


async def test_listings_statistics_and_the_audit_log_answer_while_the_disk_is_frozen(
    freezable_disk: Path, tmp_path: Path
) -> None:
    """What they read is in memory, but each report opened a connection of its own, and
    opening one (as root: chowning the -wal and -shm) waits for the frozen disk: every
    listing waited out its caller's deadline, holding a report thread, and the reads of
    every other caller queued behind. The reports' connections are open before now."""
    server = ServerProcess(freezable_disk / "data")
    server.log = tmp_path / "server.log"
    server.stdout = tmp_path / "server.out"
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            client = Client(channel, server.token())
            key = (await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))).key
            with frozen(freezable_disk):
                await asyncio.sleep(0.5)
                for _ in range(2):  # more than once: no report left its thread held
                    listed = await client.keys.ListKeys(keys_pb2.ListKeysRequest(), timeout=5)
                    assert [k.id for k in listed.keys] == [key.id]
                    stats = await client.keys.GetKeyStatistics(
                        keys_pb2.GetKeyStatisticsRequest(), timeout=5
                    )
                    assert stats.statistics.total == 1
                    audit = await client.admin.ListAuditEvents(
                        admin_pb2.ListAuditEventsRequest(action="key.generate"), timeout=5
                    )
                    assert [e.resource_id for e in audit.events] == [key.id]
    finally:
        server.terminate()
