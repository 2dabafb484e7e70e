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
import contextlib
import json
import logging
import os
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2
from keyturn_server import bootstrap
from keyturn_server.app import REFRESH_INTERVAL
from keyturn_server.cli.backup import restore
from keyturn_server.clock import ManualClock
from keyturn_server.settings import Settings
from keyturn_server.store.integrity import RowIntegrity
from keyturn_server.store.postgres import PostgresStore, upgrade
from keyturn_server.store.postgres.upgrade import SchemaBusy
from keyturn_server.store.schema import LATEST, migrations, writers_from
from keyturn_server.store.sqlite import StoreOpenError
from tests.harness import MASTER_KEY, SECRETS, Failure, Harness, failure, fresh_postgres_database
from tests.test_backup import keyturn as run_keyturn

#: Stores older Keyturns left, and the script that made them.
FIXTURES = Path(__file__).parent / "fixtures" / "older_store"


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


@pytest.mark.parametrize(
    ("sql", "writers"),
    [
        ("CREATE INDEX i ON keys (owner);", 6),
        ("-- compatible-writers: 5\nCREATE INDEX i ON keys (owner);", 5),
        ("-- Keyturn schema, version 6: an index.\n-- compatible-writers: 3\nCREATE ...", 3),
        ("-- compatible-writers: 9\nCREATE INDEX i ON keys (owner);", 6),  # not past itself
    ],
    ids=["undeclared", "declared", "under-a-heading", "declared-newer"],
)
def test_a_step_lets_older_servers_write_only_as_far_as_it_declares(sql: str, writers: int) -> None:
    assert writers_from(6, sql) == writers


def test_no_shipped_step_lets_older_servers_write() -> None:
    """Each so far changes what older servers read (row MACs, key owners, a state they
    do not know) or was written before steps could declare otherwise."""
    assert all(writers_from(v, sql) == v for v, sql in migrations("postgres"))


@pytest.mark.postgres
async def test_an_older_replica_writes_on_after_steps_that_declare_it_may(
    server: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A step that changes nothing an older server reads or writes (an index) stopped
    every older replica's writes as any step did, and a restarted one could not start:
    a rolling upgrade began with the service down to its upgraded replicas. Now a step
    says so (``-- compatible-writers: N``), and servers of schema N write on."""
    assert await generate(server) is None
    url = server.settings.store
    assert url is not None
    index = "CREATE INDEX keys_by_owner_and_type ON keys (owner, type);"
    newer = [*migrations("postgres"), (LATEST + 1, f"-- compatible-writers: {LATEST}\n{index}")]
    with monkeypatch.context() as patched:  # a newer Keyturn upgrades the database
        patched.setattr(upgrade, "migrations", lambda dialect: newer)
        store = await asyncio.to_thread(PostgresStore, url)
        await store.close()
    assert schema_of(url) == LATEST + 1
    with caplog.at_level(logging.INFO):
        await asyncio.sleep(REFRESH_INTERVAL * 2)  # the older replica has looked by now
        assert await generate(server) is None
        health = health_pb2_grpc.HealthStub(server.channel())
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        said = [r.getMessage() for r in caplog.records if "upgraded by a newer" in r.getMessage()]
        assert len(said) == 1 and "serving on" in said[0], said
    await server.restart()  # and an older replica (re)started on it serves too
    assert await generate(server) is None


#: The schema whose upgrade step creates an index on handles (0004_ended_handles.sql).
HANDLES_INDEXED = 4


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
    # The upgrade from the schema before HANDLES_INDEXED creates an index on handles, so
    # it needs the table the session holds (a later step alone may not).
    url = older_postgres_database(HANDLES_INDEXED - 1)
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
        assert schema_of(url) == HANDLES_INDEXED - 1
    finally:
        dba.close()
    store = await asyncio.to_thread(PostgresStore, url)  # once the session ended
    try:
        assert store.schema_version == LATEST and schema_of(url) == LATEST
    finally:
        await store.close()


def older_data_dir(data_dir: Path, schema: int = 1) -> dict[str, Any]:
    """A data directory as the Keyturn of ``schema`` left it (tests/fixtures/older_store:
    made by that version's code); what it holds."""
    made: dict[str, Any] = json.loads((FIXTURES / f"schema{schema}.json").read_text())
    data_dir.mkdir(mode=0o700)
    os.close(os.open(data_dir / "keyturn.db", os.O_CREAT | os.O_WRONLY, 0o600))
    with contextlib.closing(sqlite3.connect(data_dir / "keyturn.db")) as db:
        db.executescript((FIXTURES / f"schema{schema}.sql").read_text())
    (data_dir / "admin.token").write_text(made["tokens"]["admin"] + "\n")
    SECRETS.update(made["tokens"].values())
    for handle in [*made["handles"].values(), made["rotated"], made["revoked"], made["exhausted"]]:
        SECRETS.update(v for k, v in handle.items() if "token" in k)
    return made


def clock_after(made: dict[str, Any]) -> ManualClock:
    return ManualClock(datetime.fromisoformat(made["now"]) + timedelta(seconds=1))


def schema_of_file(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


async def check_everything_works(server: Harness, made: dict[str, Any]) -> None:
    """What the older Keyturn made still decrypts, verifies, validates and counts."""
    service = server.client(made["tokens"]["service"])
    verdict = await server.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())
    assert verdict.valid and verdict.entries_checked > made["audit_entries"], verdict
    config = await server.client(made["tokens"]["auditor"]).admin.GetConfig(
        admin_pb2.GetConfigRequest()
    )
    assert "tenant" in config.key_types and config.handle_types["batch"].max_usage == 7
    assert config.security_policies.rate_limit_per_handle == 60
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await server.client(made["tokens"]["revoked"]).admin.GetConfig(admin_pb2.GetConfigRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for kind, key in made["keys"].items():
        data = bytes.fromhex(key["data"])
        if "ciphertext" in key:
            opened = await service.keys.Decrypt(
                keys_pb2.DecryptRequest(
                    key_id=key["id"],
                    ciphertext=bytes.fromhex(key["ciphertext"]),
                    associated_data=b"ad",
                )
            )
            assert opened.plaintext == data and opened.key_version == 1, kind
        elif "signature" in key:
            request = keys_pb2.VerifyRequest(
                key_id=key["id"], data=data, signature=bytes.fromhex(key["signature"])
            )
            assert (await service.keys.Verify(request)).valid, kind
        else:
            mac = keys_pb2.VerifyMacRequest(
                key_id=key["id"], data=data, mac=bytes.fromhex(key["mac"])
            )
            assert (await service.keys.VerifyMac(mac)).valid, kind
        rotated = await service.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key["id"]))
        assert rotated.primary_version == 4, kind
    await service.keys.RestoreKey(keys_pb2.RestoreKeyRequest(key_id=made["removed_key"]))
    context = {"ip": "10.0.0.1", "user_agent": "ua/1"}

    async def valid(token: str) -> bool:
        request = handles_pb2.ValidateHandleRequest(token=token, context=context)
        return bool((await service.handles.ValidateHandle(request)).validation.valid)

    for kind, handle in made["handles"].items():
        assert await valid(handle["token"]), kind
        got = await service.handles.GetHandle(handles_pb2.GetHandleRequest(handle_id=handle["id"]))
        assert got.usage_count == 4, kind
    assert await valid(made["rotated"]["new_token"])
    assert not await valid(made["revoked"]["token"])
    assert not await valid(made["exhausted"]["token"])
    keys = await server.admin.keys.ListKeys(keys_pb2.ListKeysRequest())
    handles = await server.admin.handles.ListHandles(handles_pb2.ListHandlesRequest())
    assert (keys.total_size, handles.total_size) == (made["key_count"], made["handle_count"])
    # A watch resumed from a sequence seen before the upgrade goes on from there.
    first, *rest = made["events"]
    stream = server.admin.handles.WatchExpiring(events_pb2.WatchExpiringRequest(resume_after=first))
    resumed = []
    while len(resumed) < len(rest):
        event = await asyncio.wait_for(stream.read(), 5)
        if event.kind != events_pb2.EVENT_KIND_HEARTBEAT:
            resumed.append(event.sequence)
    stream.cancel()
    assert resumed == rest


@pytest.mark.sqlite_only
async def test_a_store_an_older_keyturn_left_is_upgraded_with_everything_in_it(
    tmp_path: Path,
) -> None:
    made = older_data_dir(tmp_path / "data")
    server = await Harness(tmp_path / "data", clock_after(made)).start()
    try:
        assert schema_of_file(tmp_path / "data" / "keyturn.db") == LATEST
        await check_everything_works(server, made)
    finally:
        await server.stop()


@pytest.mark.sqlite_only
async def test_an_upgrade_keeps_the_file_as_it_was_and_an_older_server_says_how_to_go_back(
    tmp_path: Path,
) -> None:
    """Rolling a bad release back: the older Keyturn refused the file its successor had
    upgraded ('schema version 5, newer than this server (4)'), and no copy from before
    the upgrade existed unless the operator had made one."""
    data_dir = tmp_path / "data"
    made = older_data_dir(data_dir)
    server = await Harness(data_dir, clock_after(made)).start()
    await server.stop()
    kept = data_dir / "keyturn.db.schema-1"
    assert kept.exists() and schema_of_file(kept) == 1
    assert kept.stat().st_mode & 0o777 == 0o600
    # The next upgrade, by a Keyturn newer than this one, keeps its copy the same way.
    database = data_dir / "keyturn.db"
    before = data_dir / f"keyturn.db.schema-{LATEST}"
    with (
        contextlib.closing(sqlite3.connect(database)) as db,
        contextlib.closing(sqlite3.connect(before)) as copy,
    ):
        db.backup(copy)
        db.execute(f"PRAGMA user_version = {LATEST + 1}")
    with pytest.raises(StoreOpenError) as refused:
        await Harness(data_dir, clock_after(made)).start()
    said = str(refused.value)
    assert f"schema version {LATEST + 1}, newer than this server ({LATEST})" in said
    assert f"keyturn backup restore {before} --data-dir {data_dir} --force" in said
    assert "Nothing was changed" in said
    assert schema_of_file(database) == LATEST + 1
    # Doing what it says brings this version back, with the data.
    settings = Settings(data_dir=data_dir, master_key=MASTER_KEY)
    await asyncio.to_thread(restore, settings, before, force=True)
    server = await Harness(data_dir, clock_after(made)).start()
    try:
        key = made["keys"]["encryption"]
        opened = await server.client(made["tokens"]["service"]).keys.Decrypt(
            keys_pb2.DecryptRequest(
                key_id=key["id"], ciphertext=bytes.fromhex(key["ciphertext"]), associated_data=b"ad"
            )
        )
        assert opened.plaintext == bytes.fromhex(key["data"])
    finally:
        await server.stop()


@pytest.mark.postgres
async def test_a_replica_older_than_its_database_is_refused_with_the_ways_on() -> None:
    url = older_postgres_database(LATEST)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO keyturn_schema VALUES (%s)", (LATEST + 1,))
    with pytest.raises(OSError, match="newer Keyturn upgraded it") as refused:
        await asyncio.to_thread(PostgresStore, url)
    assert f"schema {LATEST + 1}, newer than this server ({LATEST})" in str(refused.value)
    assert "backup taken before the upgrade" in str(refused.value)


#: The tables whose rows carry a MAC since schema 2.
PROTECTED = ("keys", "key_versions", "handles", "handle_secrets", "access_tokens", "config")


def rows_with_macs(database: Path) -> tuple[int, int]:
    """(rows with a MAC, rows) of the protected tables and the event log."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        tables = (*PROTECTED, "events")
        tagged = sum(db.execute(f"SELECT COUNT(mac) FROM {t}").fetchone()[0] for t in tables)
        total = sum(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)
        return tagged, total


class Stopped(Exception):
    """The start was stopped here (as by SIGKILL: what it committed stays)."""


@pytest.mark.sqlite_only
async def test_a_start_stopped_while_rows_get_their_macs_is_gone_on_with_not_begun_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a large store the first start after row MACs spends minutes giving every row
    its MAC (300,000 handles: two and a half minutes here), and did it in one
    transaction: a start stopped half-way had kept nothing, and the next began again."""
    monkeypatch.setattr(bootstrap, "PROTECT_UNIT", 10)
    data_dir = tmp_path / "data"
    made = older_data_dir(data_dir)
    tag = RowIntegrity.tag
    tagged = 0

    def stopping_at_the_25th_row(self: RowIntegrity, *args: Any, **kwargs: Any) -> bytes:
        nonlocal tagged
        tagged += 1
        if tagged == 25:
            raise Stopped
        return tag(self, *args, **kwargs)

    monkeypatch.setattr(RowIntegrity, "tag", stopping_at_the_25th_row)
    with pytest.raises(Stopped):
        await Harness(data_dir, clock_after(made)).start()
    kept, total = rows_with_macs(data_dir / "keyturn.db")
    assert kept == 20, (kept, total)  # two units of ten committed, the third not

    monkeypatch.setattr(RowIntegrity, "tag", tag)
    with caplog.at_level(logging.INFO):
        server = await Harness(data_dir, clock_after(made)).start()
    try:
        said = [r.getMessage() for r in caplog.records]
        assert any("where an earlier start stopped" in m for m in said), said
        protected = await server.admin.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(action="store.protect")
        )
        assert [e.details["rows"] for e in protected.events] == [str(total)]
        await check_everything_works(server, made)
    finally:
        await server.stop()
    assert rows_with_macs(data_dir / "keyturn.db")[0] >= total


@pytest.mark.sqlite_only
async def test_a_newer_keyturn_command_leaves_an_older_store_to_its_server(tmp_path: Path) -> None:
    """`keyturn token create` of a newly installed version, run before the server was
    restarted, upgraded the file under the running older server, which then refused
    every write (SCHEMA_NEWER) until someone restarted it."""
    data_dir = tmp_path / "data"
    made = older_data_dir(data_dir)
    said = await asyncio.to_thread(
        run_keyturn,
        "token",
        "create",
        "--name",
        "ci",
        "--role",
        "service",
        "--data-dir",
        str(data_dir),
    )
    assert said.returncode == 1, said.stdout
    assert f"schema version 1, older than this keyturn command's ({LATEST})" in said.stderr
    assert "Use the keyturn command of that version" in said.stderr
    assert "Nothing was changed" in said.stderr and "Traceback" not in said.stderr
    assert schema_of_file(data_dir / "keyturn.db") == 1
    assert not list(data_dir.glob("keyturn.db.schema-*"))
    server = await Harness(data_dir, clock_after(made)).start()  # its server upgrades it
    await server.stop()
    assert schema_of_file(data_dir / "keyturn.db") == LATEST


@pytest.mark.postgres
async def test_a_newer_keyturn_command_leaves_an_older_database_to_its_replicas() -> None:
    url = older_postgres_database(LATEST - 1)
    with pytest.raises(OSError, match="older than this keyturn command's") as refused:
        await asyncio.to_thread(PostgresStore, url, upgrade=False)
    assert "Nothing was changed" in str(refused.value)
    assert schema_of(url) == LATEST - 1
