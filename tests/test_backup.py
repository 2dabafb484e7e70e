"""`keyturn backup create|restore` (cli/backup.py): a copy taken while the server writes is
consistent, verified and private; restored, it serves every key and handle it held; and
a restore never runs under a live server, never uses a copy the master key cannot open,
and never deletes what the directory held."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2
from keyturn_server.cli.backup import create, restore
from keyturn_server.cli.store_files import move_aside, store_files
from keyturn_server.clock import ManualClock
from keyturn_server.settings import Settings
from tests.harness import MASTER_KEY, Client, Harness, fails
from tests.process import ServerProcess

pytestmark = pytest.mark.slow
OTHER_KEY = "ab" * 32


def keyturn(*args: str, master_key: str | None = MASTER_KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_KEY", "DATA_DIR")}
    if master_key:
        env["MASTER_KEY"] = master_key
    return subprocess.run(
        [sys.executable, "-m", "keyturn_server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _client_of(server: ServerProcess) -> tuple[grpc.aio.Channel, Client]:
    channel = grpc.aio.insecure_channel(server.address)
    return channel, Client(channel, server.token())


async def test_a_copy_taken_under_writes_restores_every_key_and_handle(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await server.start()
    channel, client = await _client_of(server)
    try:
        key = (await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
        sealed = await client.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"x"))
        session = (await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
        exported = await client.keys.ExportKey(keys_pb2.ExportKeyRequest(key_id=session.id))
        issued = await client.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session")
        )
        writing = True

        async def write() -> int:  # the server keeps committing while the copy is made
            made = 0
            while writing:
                await client.handles.GenerateHandle(
                    handles_pb2.GenerateHandleRequest(type="workflow")
                )
                made += 1
            return made

        writer = asyncio.ensure_future(write())
        await asyncio.sleep(0.3)
        backup = tmp_path / "copies" / "keyturn.backup"
        made = await asyncio.to_thread(
            keyturn, "backup", "create", str(backup), "--data-dir", str(server.data_dir)
        )
        writing = False
        assert await writer > 0
        assert made.returncode == 0, made.stderr
        assert "opens with MASTER_KEY, audit log intact" in made.stdout
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        content = backup.read_bytes()
        assert exported.material not in content  # material is sealed in the copy
        assert issued.token.encode() not in content  # handle secrets are digests
        admin_token = server.token()
        assert admin_token.encode() not in content
    finally:
        await channel.close()
        server.terminate()

    restored = tmp_path / "restored"
    put = keyturn("backup", "restore", str(backup), "--data-dir", str(restored))
    assert put.returncode == 0, put.stderr
    again = ServerProcess(restored, "--http-listen", "off")
    await again.start()
    channel = grpc.aio.insecure_channel(again.address)
    try:
        # Access tokens are in the copy (as digests): the old admin token works again.
        assert not (restored / "admin.token").exists()
        client = Client(channel, admin_token)
        opened = await client.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
        )
        assert opened.plaintext == b"x"
        valid = await client.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=issued.token)
        )
        assert valid.validation.valid
        audit = await client.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())
        assert audit.valid and audit.entries_checked > 0
    finally:
        await channel.close()
        again.terminate()


@pytest.fixture
async def stopped_copy(tmp_path: Path) -> Path:
    """A data directory made by a server that has stopped, and a backup of it."""
    server = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await server.start()
    server.terminate()
    backup = tmp_path / "keyturn.backup"
    made = keyturn("backup", "create", str(backup), "--data-dir", str(server.data_dir))
    assert made.returncode == 0, made.stderr
    return backup


async def test_a_restore_is_refused_while_a_server_holds_the_directory(
    tmp_path: Path, stopped_copy: Path
) -> None:
    server = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await server.start()
    try:
        before = (server.data_dir / "keyturn.db").read_bytes()
        put = keyturn(
            "backup", "restore", str(stopped_copy), "--data-dir", str(server.data_dir), "--force"
        )
        assert put.returncode == 1
        assert "in use by another Keyturn server" in put.stderr
        assert (server.data_dir / "keyturn.db").read_bytes() == before
    finally:
        server.terminate()


def test_a_copy_the_master_key_cannot_open_is_not_restored(
    tmp_path: Path, stopped_copy: Path
) -> None:
    target = tmp_path / "elsewhere"
    put = keyturn(
        "backup", "restore", str(stopped_copy), "--data-dir", str(target), master_key=OTHER_KEY
    )
    assert put.returncode == 1
    assert "does not open with this MASTER_KEY" in put.stderr
    assert not (target / "keyturn.db").exists()
    assert MASTER_KEY not in put.stderr + put.stdout and OTHER_KEY not in put.stderr


def test_existing_data_is_moved_aside_only_when_asked(tmp_path: Path, stopped_copy: Path) -> None:
    data_dir = tmp_path / "data"
    before = (data_dir / "keyturn.db").read_bytes()
    refused = keyturn("backup", "restore", str(stopped_copy), "--data-dir", str(data_dir))
    assert refused.returncode == 1 and "--force" in refused.stderr
    forced = keyturn("backup", "restore", str(stopped_copy), "--data-dir", str(data_dir), "--force")
    assert forced.returncode == 0, forced.stderr
    [aside] = data_dir.glob("keyturn.db.replaced-*[0-9Z]")
    assert aside.read_bytes() == before
    assert aside.name in forced.stdout


def test_a_damaged_or_foreign_file_is_not_restored(tmp_path: Path, stopped_copy: Path) -> None:
    damaged = tmp_path / "damaged.backup"
    damaged.write_bytes(stopped_copy.read_bytes()[:4096] + b"\0" * 8192)
    target = tmp_path / "target"
    put = keyturn("backup", "restore", str(damaged), "--data-dir", str(target))
    assert put.returncode == 1, put.stdout
    assert not (target / "keyturn.db").exists()


def test_an_existing_copy_is_only_replaced_when_asked(tmp_path: Path, stopped_copy: Path) -> None:
    again = keyturn("backup", "create", str(stopped_copy), "--data-dir", str(tmp_path / "data"))
    assert again.returncode == 1 and "--force" in again.stderr


def test_postgresql_stores_are_sent_to_their_own_tools() -> None:
    said = keyturn("backup", "create", "/tmp/x", "--store", "postgresql://nowhere/keyturn")
    assert said.returncode == 2
    assert "pg_dump" in said.stderr


async def test_a_wal_left_without_its_database_is_moved_aside_not_replayed(
    tmp_path: Path, stopped_copy: Path
) -> None:
    """The README's recovery: the database file is deleted under a running server, the
    server is stopped and the last backup restored. The deleted file's -wal stayed, and
    SQLite replayed it into the restored copy: the restore said it succeeded and the next
    start refused a damaged store."""
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, "--http-listen", "off")
    await server.start()
    channel, client = await _client_of(server)
    try:
        later = [
            (await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key.id
            for _ in range(5)
        ]
        for _ in range(40):
            await client.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="workflow"))
        (data_dir / "keyturn.db").unlink()
    finally:
        await channel.close()
        server.terminate()
    assert (data_dir / "keyturn.db-wal").stat().st_size > 0

    put = keyturn("backup", "restore", str(stopped_copy), "--data-dir", str(data_dir))
    assert put.returncode == 0, put.stderr
    again = ServerProcess(data_dir, "--http-listen", "off")
    await again.start()
    channel, client = await _client_of(again)
    try:
        # What the copy held, and nothing written after it.
        missing = await fails(client.keys.GetKey(keys_pb2.GetKeyRequest(key_id=later[0])))
        assert missing.code == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()
        again.terminate()
    [wal] = data_dir.glob("keyturn.db.replaced-*-wal")
    assert wal.name in put.stdout


def test_sets_moved_aside_in_the_same_second_keep_their_own_names(tmp_path: Path) -> None:
    database = tmp_path / "keyturn.db"
    moved = []
    for n in range(3):
        for path in store_files(database)[:2]:  # the database and its -wal
            path.write_text(f"set {n}")
        moved.append(move_aside(database))
    names = [path.name for paths in moved for path in paths]
    assert len(set(names)) == 6, names
    assert [paths[0].read_text() for paths in moved] == ["set 0", "set 1", "set 2"]
    assert [paths[1].name for paths in moved] == [paths[0].name + "-wal" for paths in moved]


@pytest.mark.parametrize(
    "target",
    ["data/keyturn.db", "data/keyturn.db-wal", "data/copies/keyturn.backup", "link/keyturn.db"],
    ids=["the-live-file", "its-wal", "inside-the-data-dir", "through-a-symbolic-link"],
)
def test_a_copy_is_never_written_over_or_into_the_live_store(
    tmp_path: Path, stopped_copy: Path, target: str
) -> None:
    data_dir = tmp_path / "data"
    (tmp_path / "link").symlink_to(data_dir)
    before = sorted(data_dir.iterdir())
    live = (data_dir / "keyturn.db").stat()
    made = keyturn(
        "backup", "create", str(tmp_path / target), "--force", "--data-dir", str(data_dir)
    )
    assert made.returncode == 1, made.stdout
    assert made.stderr.count("\n") == 1 and "outside" in made.stderr, made.stderr
    assert sorted(data_dir.iterdir()) == before
    assert (data_dir / "keyturn.db").stat().st_ino == live.st_ino


def newer_schema(database: Path) -> None:
    """What a newer Keyturn leaves: a schema version this one does not know."""
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA user_version = 99")


@pytest.mark.parametrize("action", ["create", "restore"])
def test_a_store_of_a_newer_keyturn_is_said_in_one_line(
    tmp_path: Path, stopped_copy: Path, action: str
) -> None:
    if action == "create":
        newer_schema(tmp_path / "data" / "keyturn.db")
        args = (str(tmp_path / "again.backup"), "--data-dir", str(tmp_path / "data"))
    else:
        newer_schema(stopped_copy)
        args = (str(stopped_copy), "--data-dir", str(tmp_path / "elsewhere"))
    said = keyturn("backup", action, *args)
    assert said.returncode == 1, said.stdout
    assert said.stderr.count("\n") == 1 and "Traceback" not in said.stderr, said.stderr
    assert "schema version 99, newer than this server" in said.stderr
    assert not (tmp_path / "again.backup").exists()
    assert not (tmp_path / "elsewhere" / "keyturn.db").exists()


@pytest.mark.parametrize(
    ("action", "where"),
    [("create", "a-file/keyturn.backup"), ("restore", "a-file/data")],
    ids=["a-copy-under-a-file", "a-data-dir-under-a-file"],
)
def test_a_path_that_cannot_be_written_is_said_in_one_line(
    tmp_path: Path, stopped_copy: Path, action: str, where: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    if action == "create":
        args = (str(tmp_path / where), "--data-dir", str(tmp_path / "data"))
    else:
        args = (str(stopped_copy), "--data-dir", str(tmp_path / where))
    said = keyturn("backup", action, *args)
    assert said.returncode == 1, said.stdout
    assert said.stderr.count("\n") == 1 and "Traceback" not in said.stderr, said.stderr
    assert said.stderr.startswith(f"keyturn backup: {tmp_path / 'a-file'}")


async def test_a_watch_resumed_from_before_a_restore_is_told_to_start_again(
    tmp_path: Path,
) -> None:
    """The restored log gave its sequences again to new events: a watcher resuming from
    the last sequence it had seen before the restore was sent what followed it, and never
    the new events with the sequences it had already seen, nor told of the rollback."""
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, master_key=MASTER_KEY)
    server = await Harness(data_dir, ManualClock()).start()

    async def revoke_one() -> None:
        issued = await server.admin.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session")
        )
        request = handles_pb2.RemoveHandleRequest(handle_id=issued.handle.id)
        await server.admin.handles.RemoveHandle(request)

    try:
        await revoke_one()
        backup = tmp_path / "copies" / "keyturn.backup"
        await asyncio.to_thread(create, settings, backup, force=False)
        for _ in range(3):
            await revoke_one()
        seen = (await server.events())[-1].sequence  # where a watcher had got to
    finally:
        await server.stop()
    await asyncio.to_thread(restore, settings, backup, force=True)
    server = await Harness(data_dir, ManualClock()).start()
    try:
        for _ in range(6):  # the restored server's log passes the watcher's point
            await revoke_one()
        stream = server.admin.handles.WatchExpiring(
            events_pb2.WatchExpiringRequest(resume_after=seen)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.wait_for(stream.read(), 5)
        assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "start a new watch" in (refused.value.details() or "")
        # A new watch gets the events that follow.
        latest = (await server.events())[-1].sequence
        assert latest > seen
        await revoke_one()
        resumed = server.admin.handles.WatchExpiring(
            events_pb2.WatchExpiringRequest(resume_after=latest)
        )
        event = await asyncio.wait_for(resumed.read(), 5)
        assert event.sequence > latest
        resumed.cancel()
    finally:
        await server.stop()
