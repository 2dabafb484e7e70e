"""The SQLite write-ahead log gives back the disk a burst took.

A long read (an auditor's VerifyAuditLog over a long log, a listing that counts a
million handles) holds its snapshot while writes go on, so the WAL cannot be
checkpointed past it and grows with every commit meanwhile. Once the read ends it is
checkpointed and written again from its start, but SQLite keeps the file at the largest
size it reached: gigabytes after a long read under load, for as long as the server ran.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keyturn.v1 import handles_pb2
from keyturn_server.clock import ManualClock
from keyturn_server.store import sqlite
from tests.harness import Harness

pytestmark = pytest.mark.sqlite_only
LIMIT = 1 << 20


@pytest.fixture
async def server(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    monkeypatch.setattr(sqlite, "WAL_LIMIT", LIMIT)  # 64 MiB: too much to write in a test
    harness = Harness(tmp_path / "data", clock)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def generate(server: Harness, count: int) -> None:
    for _ in range(count):
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))


async def test_the_wal_shrinks_back_after_a_long_read_ends(server: Harness) -> None:
    wal = server.data_dir / "keyturn.db-wal"
    reader = sqlite3.connect(server.data_dir / "keyturn.db", isolation_level=None)
    try:
        reader.execute("BEGIN")  # a long report's snapshot
        reader.execute("SELECT COUNT(*) FROM handles").fetchone()
        await generate(server, 200)
        grown = wal.stat().st_size
        assert grown > 4 * LIMIT, grown  # held back by the read
    finally:
        reader.close()
    await generate(server, 50)  # checkpointed, then written again from its start
    assert wal.stat().st_size <= LIMIT, (grown, wal.stat().st_size)
