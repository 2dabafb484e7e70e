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
from keyturn_server.store.postgres import PostgresStore, upgrade
from keyturn_server.store.postgres.upgrade import SchemaBusy
from keyturn_server.store.schema import LATEST, migrations
from tests.harness import Failure, Harness, failure, fresh_postgres_database


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


def older_postgres_database(version: int) -> str:
    """A new database at schema ``version``, as a Keyturn of that schema left it."""
    url = fresh_postgres_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE keyturn_schema (version INTEGER NOT NULL)")
        for step, sql in migrations("postgres"):
            if step <= version:
                conn.execute(sql)
                conn.execute("INSERT INTO keyturn_schema VALUES (%s)", (step,))
    return url


def schema_of(url: str) -> int:
    with psycopg.connect(url) as conn:
        (version,) = conn.execute("SELECT MAX(version) FROM keyturn_schema").fetchone() or (0,)
        return int(version)


@pytest.mark.postgres
async def test_a_schema_upgrade_behind_a_long_transaction_neither_hangs_nor_stops_older_replicas(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A session left open on the handles table (a DBA's, a report's) held the upgrade's
    CREATE INDEX without end, and PostgreSQL queued the older replicas' writes of handles
    behind it: each waited out its lock timeout and failed."""
    monkeypatch.setattr(upgrade, "MIGRATION_WAIT", 4.0)
    url = older_postgres_database(LATEST - 1)
    dba = psycopg.connect(url, application_name="psql")
    dba.execute("LOCK TABLE handles IN ROW EXCLUSIVE MODE")  # as an UPDATE left open does
    try:
        with caplog.at_level(logging.INFO):
            upgrading = asyncio.ensure_future(asyncio.to_thread(PostgresStore, url))
            await asyncio.sleep(1.5)
            # An older replica's write of handles meanwhile, with its own lock timeout.
            with psycopg.connect(url, options="-c lock_timeout=1s") as older:
                older.execute("LOCK TABLE handles IN ROW EXCLUSIVE MODE")
            with pytest.raises(SchemaBusy) as refused:
                await asyncio.wait_for(upgrading, 10)
        dba_pid = dba.info.backend_pid
        assert f"pid {dba_pid} (psql, idle in transaction" in str(refused.value)
        assert "on handles" in str(refused.value) and "nothing was changed" in str(refused.value)
        said = [r.getMessage() for r in caplog.records if "waits for tables" in r.getMessage()]
        assert len(said) == 1 and f"pid {dba_pid}" in said[0], said
        assert schema_of(url) == LATEST - 1
    finally:
        dba.close()
    store = await asyncio.to_thread(PostgresStore, url)  # once the session ended
    try:
        assert store.schema_version == LATEST and schema_of(url) == LATEST
    finally:
        await store.close()
