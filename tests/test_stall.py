"""A stall under load: another process holds the database's write lock for a second and a
half (a backup tool, `keyturn master-key rotate`, a worker of `--workers` stuck in a
commit) while 1,500 validations arrive at once.

Before, the whole backlog then ran as one unit of work in one transaction: every waiting
validation in a row on the event loop, which served nothing else meanwhile. Now it goes
in units and transactions of at most ``UNIT_LIMIT``: every call is answered, every use
counted once, in several commits."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from keyturn.v1 import admin_pb2, handles_pb2
from keyturn_server.domain.batching import UNIT_LIMIT
from tests.harness import Harness

pytestmark = pytest.mark.sqlite_only
CALLS = 1500
HANDLES = 3


async def commits(server: Harness) -> int:
    health = await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="store"))
    return health.health.components[0].store.commits


async def test_a_backlog_after_the_write_lock_was_held_is_worked_off_in_pieces(
    server: Harness,
) -> None:
    await server.set_policies(rate_limit_per_handle=CALLS)
    made = [  # session handles allow 1,000 uses each
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
        for _ in range(HANDLES)
    ]
    requests = [handles_pb2.ValidateHandleRequest(token=m.token) for m in made]
    before = await commits(server)
    holder = sqlite3.connect(server.data_dir / "keyturn.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held by another process's connection
    try:
        calls = [
            asyncio.ensure_future(server.admin.handles.ValidateHandle(requests[n % HANDLES]))
            for n in range(CALLS)
        ]
        await asyncio.sleep(1.5)  # they all arrive and wait (the store waits up to 5 s)
        assert not any(call.done() for call in calls)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    answers = await asyncio.gather(*calls)
    reasons = {handles_pb2.ValidationReason.Name(a.validation.reason) for a in answers}
    assert all(answer.validation.valid for answer in answers), reasons
    for handle in made:
        stored = await server.admin.handles.GetHandle(
            handles_pb2.GetHandleRequest(handle_id=handle.handle.id)
        )
        assert stored.usage_count == CALLS // HANDLES  # every acknowledged use, once
    assert await commits(server) - before >= CALLS // UNIT_LIMIT
