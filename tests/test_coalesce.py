"""The coalescer on a real store (SQLite; PostgreSQL too under KEYTURN_TEST_BACKEND=
postgres, where units run in worker threads): calls of one loop turn share a unit of
work, run in order, and one failing item does not fail the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from keyturn_server.domain.coalesce import Coalescer
from keyturn_server.domain.repositories import Repository, Store
from keyturn_server.store.sqlite import SqliteStore
from tests.harness import BACKEND, fresh_postgres_database


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    if BACKEND == "postgres":
        from keyturn_server.store.postgres import PostgresStore

        opened: Store = PostgresStore(fresh_postgres_database())
    else:
        opened = SqliteStore(tmp_path / "keyturn.db")
    yield opened
    await opened.close()


class Counter:
    """Each item adds itself to a stored total and answers the total it saw."""

    def __init__(self, poison: int | None = None) -> None:
        self.units: list[list[int]] = []
        self.poison = poison

    def run(self, repo: Repository, items: Sequence[int]) -> list[int]:
        self.units.append(list(items))
        total = int((repo.get_meta("total") or b"0").decode())
        seen = []
        for item in items:
            if item == self.poison:
                raise ValueError(f"item {item} is poisoned")
            total += item
            seen.append(total)
        repo.set_meta("total", str(total).encode())
        return seen


async def stored_total(store: Store) -> int:
    return int((store.read().get_meta("total") or b"0").decode())


async def test_calls_of_one_turn_share_one_unit_in_order(store: Store) -> None:
    counter = Counter()
    coalescer: Coalescer[int, int] = Coalescer(store, counter.run)
    answers = await asyncio.gather(*(coalescer.submit(n) for n in (1, 2, 3, 4)))
    assert counter.units == [[1, 2, 3, 4]]
    assert answers == [1, 3, 6, 10]  # each saw the ones before it
    assert await stored_total(store) == 10
    assert await coalescer.submit(5) == 15  # a later turn: a unit of its own
    assert counter.units[-1] == [5]


async def test_a_failing_item_fails_alone(store: Store) -> None:
    counter = Counter(poison=3)
    coalescer: Coalescer[int, int] = Coalescer(store, counter.run)
    answers = await asyncio.gather(
        *(coalescer.submit(n) for n in (1, 2, 3, 4)), return_exceptions=True
    )
    # The shared unit failed and was undone; then each item ran in a unit of its own.
    assert counter.units == [[1, 2, 3, 4], [1], [2], [3], [4]]
    assert answers[:2] == [1, 3] and answers[3] == 7
    assert isinstance(answers[2], ValueError)
    assert await stored_total(store) == 7  # 1 + 2 + 4: nothing of the failed unit kept


async def test_a_caller_that_goes_away_still_has_its_item_counted(store: Store) -> None:
    counter = Counter()
    coalescer: Coalescer[int, int] = Coalescer(store, counter.run)
    impatient = asyncio.ensure_future(coalescer.submit(5))
    patient = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0)
    impatient.cancel()
    assert await patient == 6
    assert await stored_total(store) == 6


async def test_calls_arriving_while_a_unit_runs_are_all_answered(store: Store) -> None:
    """Calls keep arriving while units run (in a worker thread on PostgreSQL): each is
    answered exactly once and counted exactly once."""
    counter = Counter()
    coalescer: Coalescer[int, int] = Coalescer(store, counter.run)

    async def burst(start: int) -> list[int]:
        answers = []
        for n in range(start, start + 25):
            answers.append(asyncio.ensure_future(coalescer.submit(1)))
            if n % 3 == 0:
                await asyncio.sleep(0)
        return list(await asyncio.gather(*answers))

    answers = [
        a for batch in await asyncio.gather(*(burst(i * 25) for i in range(20))) for a in batch
    ]
    assert sorted(answers) == list(range(1, 501))  # every running total seen exactly once
    assert await stored_total(store) == 500
    assert sum(len(unit) for unit in counter.units) == 500
    assert len(counter.units) < 500  # calls did share units
