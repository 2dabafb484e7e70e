"""The database file damaged under a running server: a failing disk, a bad sector, another
program writing into it. SQLite then answers "database disk image is malformed"
(SQLITE_CORRUPT) to whatever reads the damaged pages.

The start refuses such a file (quick_check); a running server did not notice. Every call
that touched a damaged page failed with INTERNAL and an opaque reference, each one
logged with a traceback, and health said SERVING throughout, so a load balancer kept
sending traffic and the operator's one clue was a flood of stack traces. Now such a call
is DATA_LOSS with reason STORE_CORRUPT and a message that says what to do; the server
says so once, health says NOT_SERVING, and writes are refused from then on: writing
into a damaged b-tree can lose rows that are still intact, and a restore from a backup
is the fix.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import handles_pb2, keys_pb2
from tests.harness import Harness, fails

pytestmark = pytest.mark.sqlite_only
HANDLES = 300
PAGE = 4096


def damage(database: Path, table: str) -> None:
    """Overwrite the root page of ``table`` (all but its first bytes) with noise, as a
    failing disk would; the WAL is checkpointed first so the file holds every page."""
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    with open(database, "r+b") as file:
        file.seek((root - 1) * page_size + 8)
        file.write(random.Random(7).randbytes(page_size - 8))


async def test_a_damaged_database_is_data_loss_said_once_and_not_serving(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    made = [
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
        for _ in range(HANDLES)
    ]
    health = health_pb2_grpc.HealthStub(server.channel())
    damage(server.data_dir / "keyturn.db", "handles")

    with caplog.at_level(logging.INFO):
        for handle in made[:20]:
            refused = await fails(
                server.admin.handles.ValidateHandle(
                    handles_pb2.ValidateHandleRequest(token=handle.token)
                )
            )
            assert refused.code == grpc.StatusCode.DATA_LOSS, refused
            assert refused.reason == "STORE_CORRUPT"
            assert "backup" in refused.message
            assert handle.token not in refused.message
        listed = await fails(server.admin.handles.ListHandles(handles_pb2.ListHandlesRequest()))
        assert listed.code == grpc.StatusCode.DATA_LOSS and listed.reason == "STORE_CORRUPT"
        # Writes that touch no damaged page are refused too, until a restore.
        write = await fails(server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api")))
        assert write.code == grpc.StatusCode.DATA_LOSS and write.reason == "STORE_CORRUPT"
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await server.settle()  # the scheduler reads the damaged table too

    said = [r for r in caplog.records if "damaged" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelno == logging.ERROR
    assert "backup restore" in str(getattr(said[0], "restore", ""))
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def test_postgresql_reporting_damaged_data_is_data_loss_too() -> None:
    """PostgreSQL keeps its own files and says what happened to them in its own log; a
    unit that meets its data_corrupted or index_corrupted is DATA_LOSS, not INTERNAL."""
    from psycopg import errors

    from keyturn_server.domain.errors import DataLoss
    from keyturn_server.store.postgres.connections import as_domain_error

    for error in (errors.DataCorrupted("bad page"), errors.IndexCorrupted("bad index")):
        mapped = as_domain_error(error)
        assert isinstance(mapped, DataLoss) and mapped.reason == "STORE_CORRUPT"
