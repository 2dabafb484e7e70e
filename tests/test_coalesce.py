"""The coalescer on a real store (SQLite; PostgreSQL too under KEYTURN_TEST_BACKEND=
postgres, where units run in worker threads): calls of one loop turn share a unit of
work, run in order, and one failing item does not fail the others."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain.coalesce import Coalescer
from keyturn_server.domain.errors import ResourceExhausted, Unavailable
from keyturn_server.domain.handles import Handle, HandleSchedule, HandleState
from keyturn_server.domain.repositories import Repository, Store
from tests.harness import open_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(tmp_path)
    opened.protect(Protection.derived_from(os.urandom(32)))
    await opened.write(lambda repo: repo.insert_handle(TALLY))
    yield opened
    await opened.close()


#: The stored total: a handle's usage count, read and changed as a validation does (its
#: row locked FOR UPDATE where units run concurrently, as on PostgreSQL).
TALLY = Handle(
    id="hdl_tallytallytally",
    type="tally",
    algorithm="sha256",
    state=HandleState.ACTIVE,
    owner="test",
    created_for="",
    context={},
    usage_count=0,
    max_usage=1_000_000,
    create_time=datetime(2031, 1, 1, tzinfo=UTC),
    rotate_time=datetime(2031, 1, 2, tzinfo=UTC),
    expire_time=datetime(2031, 1, 2, tzinfo=UTC),
    warn_time=datetime(2031, 1, 2, tzinfo=UTC),
    schedule=HandleSchedule(*(timedelta(days=1),) * 4),
)


class Counter:
    """Each item adds itself to a stored total and answers the total it saw."""

    def __init__(self, poison: int | None = None) -> None:
        self.units: list[list[int]] = []
        self.poison = poison

    def run(self, repo: Repository, items: Sequence[int]) -> list[int]:
        self.units.append(list(items))
        tally = repo.get_handle(TALLY.id, for_update=True)
        assert tally is not None
        total = tally.usage_count
        seen = []
        for item in items:
            if item == self.poison:
                raise ValueError(f"item {item} is poisoned")
            total += item
            seen.append(total)
        repo.update_handle(tally, dataclasses.replace(tally, usage_count=total))
        return seen


async def stored_total(store: Store) -> int:
    tally = store.read().get_handle(TALLY.id)
    assert tally is not None
    return tally.usage_count


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


async def test_a_backlog_is_taken_in_units_of_at_most_the_limit(store: Store) -> None:
    """Calls piled up during a stall (here: in one turn) are worked off in units of
    ``unit_limit``, in order, not in one unit that holds the loop for all of them."""
    counter = Counter()
    coalescer: Coalescer[int, int] = Coalescer(store, counter.run)
    coalescer.unit_limit = 100
    answers = await asyncio.gather(*(coalescer.submit(1) for _ in range(1000)))
    # Each counted once. (In arrival order on SQLite; on PostgreSQL the units run in
    # worker threads, one after another per row lock, in whichever order they get it.)
    assert sorted(answers) == list(range(1, 1001))
    assert [len(unit) for unit in counter.units] == [100] * 10
    assert await stored_total(store) == 1000


async def test_past_max_pending_a_call_is_refused_at_once(store: Store) -> None:
    counter = Counter()
    coalescer: Coalescer[int, int] = Coalescer(store, counter.run)
    coalescer.max_pending = 50
    waiting = [coalescer.submit(1) for _ in range(50)]
    with pytest.raises(ResourceExhausted) as refused:
        coalescer.submit(1)
    assert refused.value.reason == "STORE_BEHIND" and refused.value.retry_after
    assert await asyncio.gather(*waiting) == list(range(1, 51))  # the others are served
    assert await coalescer.submit(1) == 51  # and room is made again


class Unwritable(Counter):
    """A store that cannot write at all (a full disk): every unit fails the same way."""

    def run(self, repo: Repository, items: Sequence[int]) -> list[int]:
        self.units.append(list(items))
        raise Unavailable("the store could not write", reason="STORE_UNAVAILABLE")


async def test_a_store_that_cannot_write_fails_every_item_at_once(store: Store) -> None:
    """Each item alone would only fail its own commit in turn, one after another."""
    counter = Unwritable()
    coalescer: Coalescer[int, int] = Coalescer(store, counter.run)
    answers = await asyncio.gather(
        *(coalescer.submit(n) for n in range(20)), return_exceptions=True
    )
    assert all(isinstance(a, Unavailable) for a in answers)
    assert counter.units == [list(range(20))]  # no unit of its own for each


async def test_past_max_pending_a_write_is_refused_at_once(store: Store) -> None:
    """On either backend: writes waiting for the store (SQLite: for the next batch;
    PostgreSQL: for a pooled connection) are bounded."""
    store.max_pending = 20  # type: ignore[attr-defined]  # each backend has it

    def add_one(repo: Repository) -> int:
        return Counter().run(repo, [1])[0]

    waiting = [asyncio.ensure_future(store.write(add_one)) for _ in range(20)]
    await asyncio.sleep(0)  # all 20 are waiting for the store
    with pytest.raises(ResourceExhausted) as refused:
        await store.write(add_one)
    assert refused.value.reason == "STORE_BEHIND"
    assert sorted(await asyncio.gather(*waiting)) == list(range(1, 21))
