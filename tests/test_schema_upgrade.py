"""A newer Keyturn upgrades the database's schema while an older server still runs on it:
the first replica of a rolling upgrade on PostgreSQL migrates the shared database, or a
newer `keyturn` command (a backup restore, a master-key rotation) opens the data
directory of a running server.

The older server checked the schema only at start, so it went on writing rows in its
own format: a row without the columns the newer code requires (the row MACs of schema
2 made such rows read as tampered), an owner's key count the new table no longer saw.
Now it notices (SQLite: in the transaction of every batch of writes; PostgreSQL: within
a couple of seconds) and stops writing: writes are UNAVAILABLE with reason
SCHEMA_NEWER, so callers retry on an upgraded replica; reads go on; health says
NOT_SERVING, so load balancers drain it; the log says so once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import handles_pb2, keys_pb2
from tests.harness import Failure, Harness, failure


async def generate(server: Harness) -> Failure | None:
    try:
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
    except grpc.aio.AioRpcError as error:
        return failure(error)
    return None


async def refused_within(server: Harness, seconds: float) -> Failure:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        outcome = await generate(server)
        if outcome is not None:
            return outcome
        assert asyncio.get_running_loop().time() < deadline, "writes still accepted"
        await asyncio.sleep(0.2)


async def check_refused_and_drained(
    server: Harness, refused: Failure, caplog: pytest.LogCaptureFixture
) -> None:
    assert refused.code == grpc.StatusCode.UNAVAILABLE, refused
    assert refused.reason == "SCHEMA_NEWER"
    assert "upgrade" in refused.message
    again = await generate(server)
    assert again is not None and again.reason == "SCHEMA_NEWER"
    made = await server.admin.handles.ListHandles(handles_pb2.ListHandlesRequest())
    assert made is not None  # reads go on
    health = health_pb2_grpc.HealthStub(server.channel())
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    said = [r for r in caplog.records if "schema" in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(said) == 1, [r.getMessage() for r in said]


@pytest.mark.sqlite_only
async def test_an_older_server_stops_writing_once_a_newer_one_upgrades_the_file(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    assert await generate(server) is None
    with sqlite3.connect(server.data_dir / "keyturn.db") as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        db.execute(f"PRAGMA user_version = {version + 1}")
    with caplog.at_level(logging.INFO):
        refused = await generate(server)  # the very next write: checked in its transaction
        assert refused is not None
        await check_refused_and_drained(server, refused, caplog)


@pytest.mark.postgres
async def test_an_older_replica_stops_writing_once_a_newer_one_upgrades_the_database(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    assert await generate(server) is None
    url = server.settings.store
    assert url is not None and os.environ.get("KEYTURN_TEST_POSTGRES_URL")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO keyturn_schema SELECT MAX(version) + 1 FROM keyturn_schema")
    assert server.app is not None and server.app.leadership.lease() is not None
    with caplog.at_level(logging.INFO):
        refused = await refused_within(server, 10)
        await check_refused_and_drained(server, refused, caplog)
    # It lets go of the scheduler lease, which an upgraded replica takes.
    for _ in range(50):
        if server.app.leadership.lease() is None:
            break
        await asyncio.sleep(0.1)
    assert server.app.leadership.lease() is None
