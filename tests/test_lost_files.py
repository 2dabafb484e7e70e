"""The database file removed or replaced under a running server (store/files.py).

SQLite keeps writing to the open file once it has no name: before, every call went on
succeeding and a restart lost all of it, keys and therefore every ciphertext made under
them; a file moved over the database (an older copy, to bring back a revoked handle or
used-up usage) was what the next start would serve. Now writes are refused at once,
health says NOT_SERVING, reads go on, and the server saves a copy of what it still sees
that ``keyturn backup restore`` puts back.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import keys_pb2
from tests.harness import Client, fails
from tests.process import ServerProcess
from tests.test_backup import keyturn

pytestmark = pytest.mark.sqlite_only


async def health_of(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status


async def test_a_removed_data_directory_refuses_writes_and_saves_a_copy_that_restores(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", "--http-listen", "off")
    server.env["LOG_LEVEL"] = "info"
    await server.start()
    token = server.token()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            client = Client(channel, token)
            key = (
                await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
            ).key
            sealed = await client.keys.Encrypt(
                keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"the only copy")
            )
            shutil.rmtree(server.data_dir)  # a clean-up script, the wrong directory

            refused = await fails(
                client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
            )
            assert refused.code == grpc.StatusCode.UNAVAILABLE
            assert refused.reason == "STORE_FILE_GONE"
            assert str(tmp_path) not in refused.message  # paths are for the operators' log
            used = await client.keys.Encrypt(
                keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"still served")
            )
            assert used.ciphertext
            assert await health_of(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.terminate()
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    (saved,) = [line for line in lines if "copy" in line and line["category"] == "error"]
    copy = Path(saved["copy"])
    assert copy.parent == server.data_dir
    assert os.stat(copy).st_mode & 0o777 == 0o600  # private, like the database
    assert [line["msg"] for line in lines].count(
        "the database file is gone from under the server"
    ) == 1

    put = keyturn("backup", "restore", str(copy), "--data-dir", str(server.data_dir))
    assert put.returncode == 0, put.stderr
    again = ServerProcess(server.data_dir, "--http-listen", "off")
    await again.start()
    try:
        async with grpc.aio.insecure_channel(again.address) as channel:
            client = Client(channel, token)  # access tokens came back with the copy
            opened = await client.keys.Decrypt(
                keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
            )
            assert opened.plaintext == b"the only copy"
            assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        again.terminate()


async def test_an_older_copy_moved_over_the_database_is_not_served(tmp_path: Path) -> None:
    """Swapping in an older file (to bring back what was revoked or used up) is noticed
    before the next batch of writes, not at the next restart."""
    server = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await server.start()
    database = server.data_dir / "keyturn.db"
    older = tmp_path / "older.db"
    with sqlite3.connect(database) as live, sqlite3.connect(older) as out:
        live.backup(out)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            client = Client(channel, server.token())
            await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
            older.replace(database)
            refused = await fails(client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api")))
            assert refused.reason == "STORE_FILE_GONE"
            assert await health_of(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        server.terminate()
    problems = [
        json.loads(line).get("problem", "")
        for line in server.log.read_text().splitlines()
        if "gone from under" in line
    ]
    assert len(problems) == 1 and "replaced by another file" in problems[0]
