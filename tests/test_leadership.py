"""The scheduler's lease and its fence (domain/lease.py), the order in which missed
deadlines are caught up, and how database failures reach callers: pure functions by
table, then the fence on a real store (SQLite, or PostgreSQL with the postgres backend)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from keyturn.v1 import handles_pb2
from keyturn_server.domain.deadlines import DeadlineKind, Overdue
from keyturn_server.domain.errors import Aborted, Unavailable
from keyturn_server.domain.lease import Lease, LeaseLost, fenced
from keyturn_server.domain.lifecycle import UNIT, in_deadline_order, in_units
from keyturn_server.domain.repositories import Repository, Store
from keyturn_server.store.postgres.connections import (
    Backoff,
    HoldBack,
    as_domain_error,
    says_unwritable,
)
from tests.harness import Harness, open_store

K = DeadlineKind
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float, kind: DeadlineKind = K.HANDLE_ROTATE, ref: str = "x") -> Overdue:
    return Overdue(kind, T0 + timedelta(seconds=seconds), ref)


@pytest.mark.parametrize(
    ("batches", "limit", "expected"),
    [
        ([], 10, []),
        ([[at(1, ref="a"), at(3, ref="b")], [at(2, K.HANDLE_NOTIFY, "c")]], 10, ["a", "c", "b"]),
        (  # the same instant: expiry, then rotation, then the warning (the kinds' rank)
            [
                [at(5, K.HANDLE_NOTIFY, "warn")],
                [at(5, K.HANDLE_ROTATE, "rotate")],
                [at(5, K.HANDLE_EXPIRE, "expire")],
            ],
            10,
            ["expire", "rotate", "warn"],
        ),
        (  # a full batch may hide more before its last item: nothing later is taken yet
            [[at(1, ref="a"), at(2, ref="b")], [at(1.5, K.HANDLE_NOTIFY, "c"), at(3, ref="d")]],
            2,
            ["a", "c", "b"],
        ),
        (  # a warning and the rotation it announces, both missed: warning first
            [[at(12, K.HANDLE_ROTATE, "rotate")], [at(10, K.HANDLE_NOTIFY, "warn")]],
            100,
            ["warn", "rotate"],
        ),
    ],
    ids=["nothing", "interleaved", "same-instant", "full-batch-horizon", "warn-then-rotate"],
)
def test_missed_deadlines_are_merged_in_deadline_order(
    batches: list[list[Overdue]], limit: int, expected: list[str]
) -> None:
    assert [i.ref for i in in_deadline_order(batches, limit)] == expected


@pytest.mark.parametrize(
    ("items", "sizes"),
    [
        ([at(i, ref=f"h{i}") for i in range(40)], [UNIT, UNIT, 40 - 2 * UNIT]),
        (
            [at(1), at(2), at(3, K.KEY_ROTATE, "key"), at(4), at(5)],
            [2, 1, 2],  # a key's rotation makes its material first: a unit of its own
        ),
        ([], []),
    ],
    ids=["a-hundred-rotations-in-short-units", "key-rotation-alone", "nothing"],
)
def test_due_deadlines_are_acted_on_in_short_units_of_work(
    items: list[Overdue], sizes: list[int]
) -> None:
    """A unit holds its rows, and the append lock from its first event, until it commits:
    a hundred rotations in one kept every other journalling write waiting for most of a
    second under load, on PostgreSQL past its lock timeout (STORE_LOCKED)."""
    units = list(in_units(items))
    assert [len(u) for u in units] == sizes
    assert [i for u in units for i in u] == items  # in order, each once


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (
            psycopg.OperationalError("server closed the connection"),
            Unavailable,
            "STORE_UNAVAILABLE",
        ),
        (psycopg.InterfaceError("the connection is closed"), Unavailable, "STORE_UNAVAILABLE"),
        (psycopg.errors.AdminShutdown("terminating connection"), Unavailable, "STORE_UNAVAILABLE"),
        (psycopg.errors.UniqueViolation("duplicate key"), Aborted, "STORE_CONFLICT"),
        (psycopg.errors.DeadlockDetected("deadlock detected"), Aborted, "STORE_CONFLICT"),
        (psycopg.errors.SerializationFailure("could not serialize"), Aborted, "STORE_CONFLICT"),
        (psycopg.errors.SyntaxError("syntax error"), None, ""),
    ],
    ids=["closed", "interface", "shutdown", "unique", "deadlock", "serialization", "defect"],
)
def test_database_failures_reach_callers_as_retryable_statuses_not_internal(
    error: psycopg.Error, status: type[Exception] | None, reason: str
) -> None:
    mapped = as_domain_error(error)
    if status is None:
        assert mapped is None  # a defect stays an internal error
    else:
        assert isinstance(mapped, status) and mapped.reason == reason


@pytest.mark.parametrize(
    ("error", "unwritable"),
    [
        (psycopg.OperationalError("server closed the connection"), True),
        (psycopg.errors.ReadOnlySqlTransaction("read-only transaction"), True),
        (psycopg.errors.DiskFull("could not extend file"), True),
        # One transaction's fate, not the database's state: a retry can succeed at once,
        # and a replica that said NOT_SERVING for it would be drained for nothing.
        (psycopg.errors.DeadlockDetected("deadlock detected"), False),
        (psycopg.errors.SerializationFailure("could not serialize"), False),
        (psycopg.errors.UniqueViolation("duplicate key"), False),
        (psycopg.errors.SyntaxError("syntax error"), False),
    ],
    ids=["closed", "read-only", "disk-full", "deadlock", "serialization", "unique", "defect"],
)
def test_only_failures_of_the_database_itself_say_it_cannot_take_writes(
    error: psycopg.Error, unwritable: bool
) -> None:
    assert says_unwritable(error) is unwritable


def test_a_locked_table_holds_its_statement_back_and_a_slow_read_only_itself() -> None:
    """A lock belongs to the table, so every execution of the statement would wait for it:
    held back. Slowness belongs to the parameters: one caller whose listing is slow (say,
    an owner of a million handles) must not get the same statement refused for everyone
    else, whose executions are fast."""
    held = HoldBack("reads")
    slow = Unavailable("the database cancelled a statement", reason="STORE_SLOW")
    held.failed("SELECT listing", slow)
    held.check("SELECT listing")  # the next caller's execution is tried
    assert not held
    locked = Unavailable("a table this call needs is locked", reason="STORE_LOCKED")
    held.failed("SELECT handle", locked)
    with pytest.raises(Unavailable) as refused:
        held.check("SELECT handle")
    assert refused.value.reason == "STORE_LOCKED"
    held.check("SELECT key")  # other statements go on
    held.served("SELECT handle")
    held.check("SELECT handle")


def test_reconnection_backoff_grows_to_two_seconds_and_no_further() -> None:
    backoff = Backoff()
    delays = [backoff.delay() for _ in range(12)]
    assert delays[0] <= 0.12 and max(delays) <= 2.4
    assert delays[-1] >= 1.6  # settled at the bound, give or take the jitter
    backoff.reset()
    assert backoff.delay() <= 0.12


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(tmp_path)
    yield opened
    await opened.close()


async def take(store: Store, holder: str) -> Lease:
    return await store.write(lambda repo: repo.take_scheduler_lease(holder, T0))


async def test_each_takeover_raises_the_epoch_and_fences_out_the_previous_holder(
    store: Store,
) -> None:
    first = await take(store, "a")
    second = await take(store, "b")
    assert second.epoch == first.epoch + 1 and second.holder == "b"

    def mark(repo: Repository) -> None:
        repo.set_meta("fenced.mark", b"written")

    with pytest.raises(LeaseLost):
        await store.write(fenced(first, mark))
    assert store.read().get_meta("fenced.mark") is None  # nothing of it was kept
    await store.write(fenced(second, mark))
    assert store.read().get_meta("fenced.mark") == b"written"


@pytest.mark.postgres
async def test_a_takeover_waits_for_a_fenced_write_in_flight_and_the_write_for_it(
    store: Store,
) -> None:
    """The safety argument's two halves on PostgreSQL: a takeover cannot commit while a
    fenced write holds the lease row, and a fenced write started after a takeover sees
    the new epoch."""
    from keyturn_server.store.postgres import PgConnection
    from keyturn_server.store.sql import SqlRepository

    mine = await take(store, "a")
    url = store.url  # type: ignore[attr-defined]
    writer = psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row)
    taker = psycopg.connect(url, autocommit=True, row_factory=psycopg.rows.dict_row)
    try:
        with writer.transaction():
            repo = SqlRepository(
                PgConnection(writer), concurrent_writers=True, lock_appends=_nothing
            )
            assert repo.scheduler_lease(lock=True) == mine  # a fenced write, in flight
            taken = threading.Event()

            def take_over() -> None:
                with taker.transaction():
                    other = SqlRepository(
                        PgConnection(taker), concurrent_writers=True, lock_appends=_nothing
                    )
                    other.take_scheduler_lease("b", T0)
                taken.set()

            thread = threading.Thread(target=take_over)
            thread.start()
            assert not taken.wait(1.0)  # blocked behind the write
        thread.join(5)
        assert taken.is_set()  # and through once it committed
        with pytest.raises(LeaseLost):
            await store.write(fenced(mine, lambda repo: None))
    finally:
        writer.close()
        taker.close()


async def test_a_replica_whose_lease_was_taken_over_stops_scheduling(
    server: Harness,
) -> None:
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    assert server.app is not None
    held = server.app.leadership.lease()
    assert held is not None
    await take(server.app.store, "intruder")  # another process took over
    await server.advance(timedelta(minutes=6))  # the warning and rotation are due
    assert server.app.leadership.lease() is None
    kinds = [e.kind.value for e in await server.events() if e.subject_id == issued.handle.id]
    assert kinds == ["CREATED"]  # it acted on nothing


def _nothing() -> None:
    """No appends happen here: nothing to serialise."""
