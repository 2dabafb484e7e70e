"""A WatchExpiring stream reads what its caller may receive, off the event loop.

Before, opening a watch read every record of every owner: its snapshot read every key or
handle inside its warning window, and a replay from ``resume_after`` every event the log
keeps (seven days by default), decoding and authenticating each row on the event loop
and only then dropping what the caller's filter excludes. A service with nothing of its
own made the server read everyone's: 4,000 handles of another owner in their warning
window stalled every caller for 0.44 s per stream it opened (with 100 streams allowed),
and a replay over 4,000 events of another owner cost 0.5 s of CPU with 0.23 s stalls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import pytest

from keyturn.v1 import events_pb2 as E
from keyturn.v1 import handles_pb2 as R
from keyturn.v1 import keys_pb2 as K
from keyturn_server.store.sql.statements import SqlBase
from tests.harness import Client, Harness

#: Records of another owner: more than one batch of the store's reads (500).
OTHERS = 600


@dataclass
class Reads:
    """Rows the store returned from a table, and how many of them on the event loop."""

    table: str
    rows: int = 0
    on_loop: int = 0
    loop_thread: int = field(default_factory=threading.get_ident)


def count_reads(monkeypatch: pytest.MonkeyPatch, table: str) -> Reads:
    reads = Reads(table)
    fetch = SqlBase._all

    def counted(self: SqlBase, sql: str, params: Any = ()) -> list[Any]:
        found = fetch(self, sql, params)
        if f"SELECT * FROM {table} " in sql:
            reads.rows += len(found)
            if threading.get_ident() == reads.loop_thread:
                reads.on_loop += len(found)
        return found

    monkeypatch.setattr(SqlBase, "_all", counted)
    return reads


async def received(
    call: grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
    until: Callable[[E.ExpiryEvent], bool],
) -> list[E.ExpiryEvent]:
    messages: list[E.ExpiryEvent] = []
    async with asyncio.timeout(30):
        while True:
            message = await call.read()
            messages.append(message)
            if until(message):
                call.cancel()
                return messages


async def _many(calls: Callable[[], Awaitable[Any]], count: int) -> None:
    for start in range(0, count, 300):
        await asyncio.gather(*[calls() for _ in range(min(300, count - start))])


@dataclass(frozen=True)
class Subject:
    table: str
    make: Callable[[Client], Awaitable[Any]]
    #: Until every record made is inside its warning window.
    warning_after: timedelta
    watch: Callable[[Client, E.WatchExpiringRequest], Any]


SUBJECTS = {
    "handles": Subject(
        "handles",
        lambda c: c.handles.GenerateHandle(R.GenerateHandleRequest(type="device")),
        timedelta(minutes=4, seconds=5),  # device: rotates at 5 min, warns 1 min ahead
        lambda c, r: c.handles.WatchExpiring(r),
    ),
    "keys": Subject(
        "keys",
        lambda c: c.keys.GenerateKey(K.GenerateKeyRequest(type="session")),
        timedelta(hours=22, minutes=1),  # session keys: rotate at 24 h, warn 2 h ahead
        lambda c, r: c.keys.WatchExpiring(r),
    ),
}


@pytest.mark.parametrize("subject", list(SUBJECTS))
async def test_a_services_snapshot_reads_its_own_records_off_the_event_loop(
    server: Harness, monkeypatch: pytest.MonkeyPatch, subject: str
) -> None:
    what = SUBJECTS[subject]
    await server.set_policies(max_concurrent_handles=OTHERS + 1)
    bulk = await server.client_for("service", "bulk")
    watcher = await server.client_for("service", "watcher")
    await _many(lambda: what.make(bulk), OTHERS)
    await what.make(watcher)
    await server.advance(what.warning_after)
    reads = count_reads(monkeypatch, what.table)

    messages = await received(
        what.watch(watcher, E.WatchExpiringRequest()),
        lambda m: m.kind == E.EVENT_KIND_SNAPSHOT_COMPLETE,
    )

    assert [m.kind for m in messages] == [E.EVENT_KIND_EXPIRING, E.EVENT_KIND_SNAPSHOT_COMPLETE]
    assert reads.rows == 1, f"the snapshot read {reads.rows} {subject} for one of its own"
    assert reads.on_loop == 0, f"{reads.on_loop} {subject} were read on the event loop"
    # An operator's snapshot still has every owner's.
    everyone = await received(
        what.watch(server.admin, E.WatchExpiringRequest()),
        lambda m: m.kind == E.EVENT_KIND_SNAPSHOT_COMPLETE,
    )
    assert len(everyone) == OTHERS + 2


async def test_a_services_replay_reads_its_own_events_off_the_event_loop(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.set_policies(max_concurrent_handles=OTHERS)
    bulk = await server.client_for("service", "bulk")
    watcher = await server.client_for("service", "watcher")
    await _many(lambda: bulk.handles.GenerateHandle(R.GenerateHandleRequest(type="device")), OTHERS)
    mine = await watcher.handles.GenerateHandle(R.GenerateHandleRequest(type="device"))
    await watcher.keys.GenerateKey(K.GenerateKeyRequest(type="session"))
    reads = count_reads(monkeypatch, "events")

    messages = await received(
        watcher.handles.WatchExpiring(E.WatchExpiringRequest(resume_after=0)),
        lambda m: m.kind == E.EVENT_KIND_HEARTBEAT or m.handle.id == mine.handle.id,
    )

    assert [(m.kind, m.handle.id) for m in messages] == [(E.EVENT_KIND_CREATED, mine.handle.id)]
    assert reads.rows == 1, f"the replay read {reads.rows} events for one of its own"
    assert reads.on_loop == 0, f"{reads.on_loop} events were read on the event loop"
