"""A full disk under the embedded store: the real server on a small filesystem of its own
(tmpfs), filled up while callers keep validating and generating keys.

Every write is refused with RESOURCE_EXHAUSTED (STORE_FULL: nothing of it kept), reads
still answer, health says NOT_SERVING, the log says so once (not once per failed commit,
hundreds a second, onto the full disk), and once room is made everything works again
without a restart: no usage lost or counted twice, the file intact.

Mounting needs root; without it the test is skipped, unless KEYTURN_REQUIRE_ALL is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server.app import FLUSH_INTERVAL
from tests.harness import Client, fails, health_becomes
from tests.process import ServerProcess

pytestmark = pytest.mark.sqlite_only
SIZE = "8m"
ROUNDS = 150


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        why = f"mounting a small filesystem needs root: {done.stderr.strip()}"
        if os.environ.get("KEYTURN_REQUIRE_ALL"):
            pytest.fail(f"{why} (KEYTURN_REQUIRE_ALL is set)")
        pytest.skip(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``."""
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


async def outcome(call: object) -> str:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


async def test_a_full_disk_refuses_writes_keeps_counts_exact_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    server = ServerProcess(small_disk / "data")
    server.log = tmp_path / "server.log"  # the log is not on the disk that fills up
    server.stdout = tmp_path / "server.out"
    server.env["LOG_LEVEL"] = "info"
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            client = Client(channel, server.token())
            health = health_pb2_grpc.HealthStub(channel)
            key = (await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))).key
            made = await client.handles.GenerateHandle(
                handles_pb2.GenerateHandleRequest(type="api")
            )
            validate = handles_pb2.ValidateHandleRequest(token=made.token)
            counted = 0

            async def use(rounds: int) -> dict[str, int]:
                nonlocal counted
                seen: dict[str, int] = {}
                for _ in range(rounds):
                    try:
                        answer = await client.handles.ValidateHandle(validate)
                        code = "OK" if answer.validation.valid else "INVALID"
                        counted += answer.validation.valid
                    except grpc.aio.AioRpcError as error:
                        code = error.code().name  # never UNKNOWN: checked by the caller
                    seen[f"validate {code}"] = seen.get(f"validate {code}", 0) + 1
                    generated = await outcome(
                        client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
                    )
                    seen[f"generate {generated}"] = seen.get(f"generate {generated}", 0) + 1
                return seen

            assert await use(5) == {"validate OK": 5, "generate OK": 5}
            filler = fill(small_disk)
            full = await use(ROUNDS)
            # Some writes may still fit in pages SQLite had; then every one is refused.
            assert full.get("validate RESOURCE_EXHAUSTED", 0) >= ROUNDS // 2, full
            assert set(full) <= {
                "validate OK",
                "validate RESOURCE_EXHAUSTED",
                "generate OK",
                "generate RESOURCE_EXHAUSTED",
            }, full
            refused = await fails(client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api")))
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.reason == "STORE_FULL", refused
            # Reads still answer; health tells load balancers to look elsewhere.
            read = await client.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
            assert read.id == key.id
            checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING

            # A load balancer sends nothing more to a server that says NOT_SERVING. Once
            # its last writes of its own are done (usage counts are flushed every five
            # seconds), nothing would write again: it must find out by itself that it
            # can, or it never serves again.
            await asyncio.sleep(FLUSH_INTERVAL + 1)
            filler.unlink()
            assert await health_becomes(health, health_pb2.HealthCheckResponse.SERVING), (
                "still NOT_SERVING with room on the disk"
            )
            assert await use(5) == {"validate OK": 5, "generate OK": 5}
            stored = await client.handles.GetHandle(
                handles_pb2.GetHandleRequest(handle_id=made.handle.id)
            )
            assert stored.usage_count == counted  # every acknowledged use, once
            report = await client.admin.GetHealth(admin_pb2.GetHealthRequest())
            assert report.health.status == admin_pb2.SERVING_STATUS_SERVING
    finally:
        server.terminate()
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    failing = [line for line in lines if line["msg"].startswith("store commits fail")]
    again = [line for line in lines if line["msg"] == "store commits succeed again"]
    assert len(failing) == 1 and "full" in failing[0]["problem"], failing
    assert len(again) == 1 and again[0]["failed_commits"] >= ROUNDS // 2, again
    # Nor once per refused call in the access log: a summary per caller and window.
    refused = [
        line
        for line in lines
        if line["category"] == "access" and line["code"] == "RESOURCE_EXHAUSTED"
    ]
    assert sum(line.get("calls", 1) for line in refused) >= ROUNDS // 2
    assert len(refused) <= 10, [line["msg"] for line in refused][:5]
    with sqlite3.connect(small_disk / "data" / "keyturn.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
