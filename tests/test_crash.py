"""Crash safety: SIGKILL the real server at random moments under a mixed load, restart it,
and check that everything acknowledged survived and nothing is half-applied.

KEYTURN_CRASH_CYCLES sets the number of kills (default 20); each cycle drives load for a
random 0.2-1.0 s before the kill.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2, resources_pb2
from tests.harness import Client
from tests.process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.sqlite_only]
CYCLES = int(os.environ.get("KEYTURN_CRASH_CYCLES", "20"))
WORKERS = 4


@dataclass
class HandleRecord:
    token: str
    max_usage: int
    acknowledged_uses: int = 0
    attempts: int = 0
    removed: bool = False


@dataclass
class Ledger:
    """Everything the server acknowledged, as the clients saw it."""

    keys: dict[str, int] = field(default_factory=dict)  # id -> acknowledged primary version
    handles: dict[str, HandleRecord] = field(default_factory=dict)
    config_revision: int = 0
    acknowledged: int = 0
    failed: int = 0


async def worker(client: Client, ledger: Ledger, rng: random.Random, stop: asyncio.Event) -> None:
    while not stop.is_set():
        action = rng.choices(
            ["key", "rotate_key", "handle", "validate", "rotate_handle", "remove", "config"],
            weights=[10, 10, 10, 45, 8, 4, 3],
        )[0]
        try:
            await act(client, ledger, rng, action)
            ledger.acknowledged += 1
        except grpc.aio.AioRpcError as error:
            ledger.failed += 1
            if error.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.ABORTED,
            ):
                raise


async def act(client: Client, ledger: Ledger, rng: random.Random, action: str) -> None:
    if action == "key" or not ledger.keys:
        kind = rng.choice(["encryption", "session", "api"])
        key = (await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type=kind))).key
        ledger.keys[key.id] = 1
    elif action == "rotate_key":
        key_id = rng.choice(list(ledger.keys))
        key = await client.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key_id))
        ledger.keys[key_id] = max(ledger.keys[key_id], key.primary_version)
    elif action == "handle" or not ledger.handles:
        kind = rng.choice(["device", "session"])
        issued = await client.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type=kind))
        ledger.handles[issued.handle.id] = HandleRecord(issued.token, issued.handle.max_usage)
    elif action == "validate":
        handle_id = rng.choice(list(ledger.handles))
        record = ledger.handles[handle_id]
        record.attempts += 1
        answer = await client.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=record.token)
        )
        if answer.validation.valid:
            record.acknowledged_uses += 1
    elif action == "rotate_handle":
        handle_id = rng.choice(list(ledger.handles))
        rotated = await client.handles.RotateHandle(
            handles_pb2.RotateHandleRequest(handle_id=handle_id)
        )
        ledger.handles[handle_id].token = rotated.token
    elif action == "remove":
        handle_id = rng.choice(list(ledger.handles))
        await client.handles.RemoveHandle(handles_pb2.RemoveHandleRequest(handle_id=handle_id))
        ledger.handles[handle_id].removed = True
    else:
        current = await client.admin.GetConfig(admin_pb2.GetConfigRequest())
        updated = await client.admin.UpdateConfig(
            admin_pb2.UpdateConfigRequest(
                config=admin_pb2.Config(
                    security_policies=admin_pb2.SecurityPolicies(
                        rate_limit_per_handle=rng.randint(5000, 9000)
                    )
                ),
                update_mask={"paths": ["security_policies.rate_limit_per_handle"]},
                etag=current.etag,
            )
        )
        ledger.config_revision = max(ledger.config_revision, updated.revision)


async def check(client: Client, ledger: Ledger, sample: int | None = None) -> None:
    """Every acknowledged change is there (or a random sample of them, between cycles);
    usage never went backwards nor over the limit; the audit chain and event log hold."""
    keys = list(ledger.keys.items())
    handles = list(ledger.handles.items())
    if sample is not None:
        keys = random.sample(keys, min(sample, len(keys)))
        handles = random.sample(handles, min(sample, len(handles)))
    for key_id, version in keys:
        key = await client.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key_id))
        assert key.primary_version >= version, key_id
    for handle_id, record in handles:
        handle = await client.handles.GetHandle(handles_pb2.GetHandleRequest(handle_id=handle_id))
        assert record.acknowledged_uses <= handle.usage_count <= record.attempts, handle_id
        assert handle.usage_count <= handle.max_usage
        if record.removed:
            assert handle.status == resources_pb2.HANDLE_STATUS_REVOKED
    config = await client.admin.GetConfig(admin_pb2.GetConfigRequest())
    assert config.revision >= ledger.config_revision
    audit = await client.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())
    assert audit.valid, audit.problem
    sequences = []
    stream = client.keys.WatchExpiring(events_pb2.WatchExpiringRequest(resume_after=0))
    handle_stream = client.handles.WatchExpiring(events_pb2.WatchExpiringRequest(resume_after=0))
    for watched in (stream, handle_stream):
        while True:
            event = await asyncio.wait_for(watched.read(), 10)
            if event.kind == events_pb2.EVENT_KIND_HEARTBEAT:
                break
            sequences.append(event.sequence)
        watched.cancel()
    assert sorted(sequences) == list(range(1, len(sequences) + 1)), "the event log has a gap"


def check_nothing_half_applied(database: Path) -> None:
    conn = sqlite3.connect(database)
    try:

        def one(sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        assert (
            one(
                "SELECT COUNT(*) FROM keys k WHERE primary_version <> "
                "(SELECT MAX(version) FROM key_versions v WHERE v.key_id = k.id)"
            )
            == 0
        )
        assert (
            one(
                "SELECT COUNT(*) FROM handles h WHERE generation <> "
                "(SELECT MAX(generation) FROM handle_secrets s WHERE s.handle_id = h.id)"
            )
            == 0
        )
        assert (
            one(
                "SELECT COUNT(*) FROM keys k WHERE NOT EXISTS (SELECT 1 FROM audit a "
                "WHERE a.action = 'key.generate' AND a.resource_id = k.id)"
            )
            == 0
        )
        assert (
            one(
                "SELECT COUNT(*) FROM handles h WHERE NOT EXISTS (SELECT 1 FROM audit a "
                "WHERE a.action = 'handle.generate' AND a.resource_id = h.id)"
            )
            == 0
        )
        assert (
            one(
                "SELECT COUNT(*) FROM keys k WHERE NOT EXISTS (SELECT 1 FROM events e "
                "WHERE e.kind = 'CREATED' AND e.subject_id = k.id)"
            )
            == 0
        )
        rotations = one("SELECT COUNT(*) FROM audit WHERE action = 'key.rotate'")
        assert rotations == one(
            "SELECT COUNT(*) FROM events WHERE kind = 'ROTATED' AND subject = 'key'"
        )
    finally:
        conn.close()


async def test_sigkill_at_random_moments_loses_nothing_acknowledged(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    rng = random.Random(int(os.environ.get("KEYTURN_CRASH_SEED", "2026")))
    server = ServerProcess(tmp_path / "data", "--heartbeat", "0.2s")
    ledger = Ledger()
    try:
        for cycle in range(CYCLES):
            await server.start()
            async with grpc.aio.insecure_channel(server.address) as channel:
                client = Client(channel, server.token())
                await check(client, ledger, sample=40)
                stop = asyncio.Event()
                tasks = [
                    asyncio.create_task(worker(client, ledger, random.Random(rng.random()), stop))
                    for _ in range(WORKERS)
                ]
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                server.kill()
                stop.set()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert results == [None] * WORKERS, f"cycle {cycle}: {results!r}"
        await server.start()
        async with grpc.aio.insecure_channel(server.address) as channel:
            await check(Client(channel, server.token()), ledger)
        assert server.terminate() == 0
        check_nothing_half_applied(tmp_path / "data" / "keyturn.db")
    finally:
        server.kill()
    record_property(
        "figures",
        f"crash: {CYCLES} SIGKILL cycles survived; {ledger.acknowledged} acknowledged "
        f"operations checked ({len(ledger.keys)} keys, {len(ledger.handles)} handles, "
        f"{sum(h.acknowledged_uses for h in ledger.handles.values())} counted validations); "
        f"{ledger.failed} calls cut off by the kills; 0 lost",
    )
    assert ledger.acknowledged > CYCLES * 5
