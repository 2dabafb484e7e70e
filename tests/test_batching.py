"""Adaptive group commit: a batch is held open while work keeps arriving, and not at all
for a caller that waits for each answer before it sends again.

Structure, not speed, is asserted (units per item, holds that happened): the figures of
throughput and latency live in bench/."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keyturn.v1 import admin_pb2, handles_pb2
from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain import batching
from keyturn_server.domain.batching import LIMIT, BatchWindow
from keyturn_server.domain.coalesce import Coalescer
from keyturn_server.domain.repositories import Repository
from keyturn_server.store.sqlite import SqliteStore
from tests.harness import Harness
from tests.test_coalesce import TALLY, Counter


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "keyturn.db")
    opened.protect(Protection.derived_from(os.urandom(32)))  # row MACs need their keys
    await opened.write(lambda repo: repo.insert_handle(TALLY))
    yield opened
    await opened.close()


async def caller(coalescer: Coalescer[int, int], calls: int, spread: float) -> list[int]:
    """A client with one call in flight: it sends the next once the last is answered,
    after ``spread`` seconds at most (calls reach a server one at a time)."""
    answers = []
    for _ in range(calls):
        await asyncio.sleep(random.uniform(0, spread))
        answers.append(await coalescer.submit(1))
    return answers


async def test_one_caller_in_lockstep_gets_a_unit_per_call_and_no_holds(
    store: SqliteStore,
) -> None:
    coalescer: Coalescer[int, int] = Coalescer(store, Counter().run)
    answers = await caller(coalescer, 40, 0.0005)
    assert answers == list(range(1, 41))
    figures = coalescer.window.figures
    assert figures.batches == 40
    # Holds that bring nothing switch holding off: only the first ones and the probes.
    assert figures.holds <= batching.FRUITLESS + 40 // batching.PROBE + 1


async def test_many_callers_share_units_that_grow_with_the_load(store: SqliteStore) -> None:
    coalescer: Coalescer[int, int] = Coalescer(store, Counter().run)
    callers, calls = 32, 25
    results = await asyncio.gather(*(caller(coalescer, calls, 0.002) for _ in range(callers)))
    answers = sorted(a for r in results for a in r)
    assert answers == list(range(1, callers * calls + 1))  # each counted once, in order
    figures = coalescer.window.figures
    assert figures.items == callers * calls
    # Without holding, a unit takes what arrived during one commit (about 7 here); held
    # open while calls keep coming, a unit carries most of the callers (32 here).
    assert figures.items / figures.batches >= callers / 2, figures


async def test_a_hold_ends_at_the_first_quiet_wait() -> None:
    window = BatchWindow(cap=1.0)
    for _ in range(5):
        window.arrived()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await window.hold(pending=5)
    assert loop.time() - started < 0.5  # far below the cap: nobody else came
    assert window.figures.holds == 1


async def arriving(window: BatchWindow) -> tuple[asyncio.Task[None], list[int]]:
    """Work arriving every 0.1 ms from a task of its own, already under way: its first step
    is only scheduled, and a process preempted for a millisecond before that step ran had
    a hold's first wait end before the first arrival, and the batch close (CI, under load).
    Returns the task and the count of arrivals so far."""
    window.arrived()
    arrived = [1]
    under_way = asyncio.Event()

    async def arrivals() -> None:
        while True:
            await asyncio.sleep(0.0001)
            window.arrived()
            arrived[0] += 1
            if arrived[0] >= 3:
                under_way.set()

    feeding = asyncio.ensure_future(arrivals())
    await under_way.wait()
    return feeding, arrived


async def test_a_hold_lasts_while_work_arrives_up_to_the_cap() -> None:
    window = BatchWindow(cap=0.05)
    feeding, _ = await arriving(window)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await window.hold(pending=1)
        assert loop.time() - started >= 0.05
    finally:
        feeding.cancel()


async def test_a_hold_closes_at_the_limit_though_work_keeps_arriving() -> None:
    # So that the next batch gathers while this one commits (batching.LIMIT).
    window = BatchWindow(cap=1.0)
    assert window.limit == LIMIT
    feeding, arrived = await arriving(window)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await window.hold(pending=1)
        assert loop.time() - started < 0.5  # far below the cap
    finally:
        feeding.cancel()
    assert LIMIT <= arrived[0] < 2 * LIMIT


async def test_a_full_batch_is_not_held() -> None:
    window = BatchWindow(cap=1.0, limit=4)
    window.arrived()
    await window.hold(pending=4)
    assert window.figures.holds == 0


async def test_the_store_counts_commits_and_what_they_carried(store: SqliteStore) -> None:
    before = store.status()
    await asyncio.gather(
        *(store.write(lambda repo: repo.get_handle(TALLY.id) and None) for _ in range(10))
    )
    after = store.status()
    assert after.commits > before.commits
    assert after.writes - before.writes == 10


async def test_health_shows_commits_and_the_writes_they_carried(server: Harness) -> None:
    async def store() -> admin_pb2.StoreHealth:
        reply = await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="store"))
        return reply.health.components[0].store

    before = await store()
    await asyncio.gather(
        *(
            server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
            for _ in range(8)
        )
    )
    after = await store()
    assert after.writes - before.writes >= 8
    assert 1 <= after.commits - before.commits <= after.writes - before.writes


async def test_a_backlog_of_units_commits_in_transactions_of_at_most_the_limit(
    store: SqliteStore,
) -> None:
    """Units piled up while the store could not commit (here: queued in one turn) run
    in several transactions, so the loop serves other calls between them."""
    store.unit_limit = 100
    before = store.commits

    def add_one(repo: Repository) -> int:
        return Counter().run(repo, [1])[0]

    answers = await asyncio.gather(*(store.write(add_one) for _ in range(1000)))
    assert answers == list(range(1, 1001))
    assert store.commits - before >= 10
