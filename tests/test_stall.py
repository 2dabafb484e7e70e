"""A stall under load: another process holds the database's write lock for a second and a
half (a backup tool, `keyturn master-key rotate`, a worker of `--workers` stuck in a
commit) while 1,500 validations arrive at once.

Before, the whole backlog then ran as one unit of work in one transaction: every waiting
validation in a row on the event loop, which served nothing else meanwhile. Now it goes
in units and transactions of at most ``UNIT_LIMIT``: every call is answered, every use
counted once, in several commits."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import grpc
import pytest

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server.api.ratelimit import CallerLimiter
from keyturn_server.clock import ManualClock
from keyturn_server.domain.batching import UNIT_LIMIT
from keyturn_server.domain.errors import ResourceExhausted
from keyturn_server.domain.write_shares import CALLER_WRITES, WriteShares
from tests.harness import Client, Failure, Harness, fails, failure
from tests.test_listeners import settings

pytestmark = pytest.mark.sqlite_only
T = TypeVar("T")
CALLS = 1500
HANDLES = 3


async def commits(server: Harness) -> int:
    health = await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="store"))
    return health.health.components[0].store.commits


async def test_a_backlog_after_the_write_lock_was_held_is_worked_off_in_pieces(
    server: Harness,
) -> None:
    await server.restart(caller_max_in_flight=CALLS)  # one caller's calls make the backlog
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


async def test_a_write_lock_held_past_the_wait_is_not_serving_said_once_and_then_serving(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    holder = sqlite3.connect(server.data_dir / "keyturn.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a worker stuck in its commit holds it so
    try:
        generate = keys_pb2.GenerateKeyRequest(type="api")
        refused = await asyncio.gather(
            *(fails(server.admin.keys.GenerateKey(generate)) for _ in range(3))
        )
        assert {r.code for r in refused} == {grpc.StatusCode.UNAVAILABLE}
        report = await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="store"))
        [store] = report.health.components
        assert store.status == admin_pb2.SERVING_STATUS_NOT_SERVING
        assert "write lock" in store.reasons[0], store.reasons
        await fails(server.admin.keys.GenerateKey(generate))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
    report = await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="store"))
    assert report.health.status == admin_pb2.SERVING_STATUS_SERVING
    said = [r.getMessage() for r in caplog.records if r.name == "keyturn.store"]
    assert [m.split(":")[0] for m in said] == ["store commits fail", "store commits succeed again"]


async def test_one_token_flooding_during_a_stall_is_held_to_its_own_budget(
    server: Harness,
) -> None:
    """An attacker with one service token floods validations while the write lock is held.
    Its caller limit refuses it before its calls join the backlog every caller shares, so
    what it can queue is its burst plus its rate over the stall (at the defaults 2,000 +
    1,000/s: 7,000 over the store's 5 s lock wait, under MAX_PENDING's 10,000), and another
    caller's validation still waits its turn and is served."""
    await server.restart(caller_rate_limit=1, caller_burst=40)  # the clock stands: 40 calls
    flooder, mine, bystander, theirs = await two_callers(server)
    with write_lock_held(server):
        flood = flood_of(200, lambda: outcome(validate(flooder, mine.token)))
        waiting = asyncio.ensure_future(validate(bystander, theirs.token))
        await asyncio.sleep(0.5)
        refused = [call.result() for call in flood if call.done()]
        assert refused.count("RESOURCE_EXHAUSTED") == 200 - 39  # 1 of 40 made its handle
        assert not waiting.done()
    assert (await waiting).validation.valid
    served = await asyncio.gather(*flood)
    assert served.count("OK") == 39
    stored = await server.admin.handles.GetHandle(
        handles_pb2.GetHandleRequest(handle_id=mine.handle.id)
    )
    assert stored.usage_count == 39


async def test_one_caller_may_have_only_its_share_of_calls_waiting_on_a_stalled_store(
    server: Harness,
) -> None:
    """A stall longer than a rate limit covers (a hung fsync, a lock held for minutes), or a
    caller trusted with no rate limit: one token's calls in progress are capped, so its
    flood cannot take the whole shared backlog (MAX_PENDING) and leave every other caller
    refused with STORE_BEHIND. Past its cap its calls are refused at once; another
    caller's call still waits its turn and is served."""
    await server.restart(caller_rate_limit=0, caller_max_in_flight=50)
    flooder, mine, bystander, theirs = await two_callers(server)
    with write_lock_held(server):
        flood = flood_of(200, lambda: fails_or_ok(validate(flooder, mine.token)))
        await asyncio.sleep(0.5)
        waiting = asyncio.ensure_future(validate(bystander, theirs.token))
        await asyncio.sleep(0.3)
        refused = [call.result() for call in flood if call.done()]
        assert len(refused) == 150
        assert all(r is not None and r.reason == "CALLER_IN_FLIGHT" for r in refused), refused[:1]
        assert refused[0] is not None and refused[0].metadata["limit"] == "50"
        assert refused[0].retry_after is not None
        assert not waiting.done()
    assert (await waiting).validation.valid
    served = await asyncio.gather(*flood)
    assert served.count(None) == 50
    stored = await server.admin.handles.GetHandle(
        handles_pb2.GetHandleRequest(handle_id=mine.handle.id)
    )
    assert stored.usage_count == 50
    # The cap counts calls in progress, not calls made: once they are answered the
    # caller has its whole share again.
    again = await asyncio.gather(
        *(
            fails_or_ok(
                flooder.handles.ValidateHandle(handles_pb2.ValidateHandleRequest(token=mine.token))
            )
            for _ in range(50)
        )
    )
    assert again.count(None) == 50


async def fails_or_ok(call: Awaitable[object]) -> Failure | None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return failure(error)
    return None


Made = handles_pb2.GenerateHandleResponse


async def two_callers(server: Harness) -> tuple[Client, Made, Client, Made]:
    """An attacker's service token and a bystander's, each with a session handle that
    allows 1,000 validations a minute."""
    await server.set_policies(rate_limit_per_handle=1000)
    flooder = await server.client_for("service", "flooder")
    bystander = await server.client_for("service", "bystander")
    session = handles_pb2.GenerateHandleRequest(type="session")
    mine = await flooder.handles.GenerateHandle(session)
    theirs = await bystander.handles.GenerateHandle(session)
    return flooder, mine, bystander, theirs


@contextlib.contextmanager
def write_lock_held(server: Harness) -> Iterator[None]:
    """The database's write lock, held by another process's connection meanwhile."""
    holder = sqlite3.connect(server.data_dir / "keyturn.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def validate(client: Client, token: str) -> Awaitable[handles_pb2.ValidateHandleResponse]:
    return client.handles.ValidateHandle(handles_pb2.ValidateHandleRequest(token=token))


def flood_of(count: int, call: Callable[[], Awaitable[T]]) -> list[asyncio.Future[T]]:
    return [asyncio.ensure_future(call()) for _ in range(count)]


async def outcome(call: Awaitable[object]) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


def test_a_caller_has_its_whole_share_again_once_its_calls_are_answered() -> None:
    limiter = CallerLimiter(ManualClock(), per_second=0, burst=0, max_in_flight=2)
    limiter.enter("a")
    limiter.enter("a")
    limiter.enter("b")  # the cap is per caller
    with pytest.raises(ResourceExhausted):
        limiter.enter("a")
    for _ in range(2):
        limiter.leave("a")
    limiter.enter("a")
    limiter.enter("a")
    unlimited = CallerLimiter(ManualClock(), per_second=0, burst=0, max_in_flight=0)
    for _ in range(5000):
        unlimited.enter("a")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], 1000), (["--caller-max-in-flight", "50"], 50), (["--caller-max-in-flight", "0"], 0)],
)
def test_the_cap_on_calls_in_progress_comes_from_its_flag(argv: list[str], expected: int) -> None:
    assert settings(argv).caller_max_in_flight == expected


@pytest.mark.parametrize("text", ["-1", "many", "1.5"])
def test_a_cap_on_calls_in_progress_that_is_not_a_count_is_refused(text: str) -> None:
    with pytest.raises(SystemExit):
        settings(["--caller-max-in-flight", text])


async def test_one_callers_flood_of_writes_does_not_queue_another_callers_write_behind_it(
    server: Harness,
) -> None:
    """One service within its rights (1,000 calls in progress) sends more writes than the
    store commits. Before, they joined the writer's one queue in arrival order and
    another caller's write waited behind all of them: with 600 of one token's
    GenerateHandle queued (here behind a held write lock; on a busy server, behind the
    disk), another service's GenerateHandle was answered after every one of them. Now
    the flood waits for its own share of the writer (16 writes), and the other caller's
    write commits with the first transaction."""
    await server.set_policies(max_concurrent_handles=1000)
    flooder = await server.client_for("service", "flooder")
    bystander = await server.client_for("service", "bystander")
    device = handles_pb2.GenerateHandleRequest(type="device")
    answered: list[str] = []

    async def generate(client: Client, who: str) -> None:
        await client.handles.GenerateHandle(device)
        answered.append(who)

    with write_lock_held(server):
        flood = flood_of(600, lambda: generate(flooder, "flooder"))
        await asyncio.sleep(0.5)  # all of them arrive and wait for the store
        theirs = asyncio.ensure_future(generate(bystander, "bystander"))
        await asyncio.sleep(0.3)
        assert not answered
    await theirs
    ahead = answered.index("bystander")
    assert ahead <= 2 * CALLER_WRITES, f"{ahead} of the flood's writes were answered first"
    await asyncio.gather(*flood)  # the flood is served too, in its turn
    assert answered.count("flooder") == 600


async def test_a_caller_that_stops_waiting_still_holds_the_share_its_writes_take() -> None:
    """A caller with short deadlines must not queue writes without bound: a place is
    given back when the write is done, not when its caller gives up on it."""
    shares = WriteShares(per_caller=2)
    release = asyncio.Event()
    done: list[int] = []

    async def write(n: int) -> int:
        await release.wait()
        done.append(n)
        return n

    calls = [asyncio.ensure_future(shares.run("a", write(n))) for n in range(3)]
    other = asyncio.ensure_future(shares.run("b", write(9)))  # the share is per caller
    unnamed = asyncio.ensure_future(shares.run("", write(8)))  # internal: no share
    await asyncio.sleep(0)
    for call in calls:
        call.cancel()  # the callers went away
    await asyncio.sleep(0)
    assert shares.waiting("a") == 2  # the two writes started still hold their places
    release.set()
    assert await other == 9 and await unnamed == 8
    await asyncio.sleep(0)
    assert sorted(done) == [0, 1, 8, 9]  # the third never started: nothing of it was done
    assert shares.waiting("a") == 0 and shares.waiting("b") == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], CALLER_WRITES), (["--caller-max-writes", "8"], 8), (["--caller-max-writes", "0"], 0)],
)
def test_each_callers_share_of_the_writer_comes_from_its_flag(
    argv: list[str], expected: int
) -> None:
    assert settings(argv).caller_max_writes == expected
