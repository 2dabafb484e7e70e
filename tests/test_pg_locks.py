"""A table locked in the database under the replicas: a DBA's VACUUM FULL or CLUSTER, a
migration's ALTER TABLE, a `LOCK TABLE` left open in a psql session.

Reads run on the event loop (an indexed lookup answers faster than a thread hop), and a
read of a table under an ACCESS EXCLUSIVE lock waits for it. It used to wait for as long
as the lock was held, with the loop: every call froze, health checks included, on every
replica at once, and load balancers and liveness probes gave up on all of them. Writes
waited too, each holding one of the pool's sessions, until none was left for writes to
other tables. Now a read waits at most 50 ms for a lock and a write a second; what met
the lock (that read's statement, that write's unit of work) is then refused at once
(UNAVAILABLE, STORE_LOCKED: retryable) for a second before it is tried again, and the
server serves everything else meanwhile. (Run with KEYTURN_TEST_BACKEND=postgres.)
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.clock import ManualClock
from keyturn_server.domain.errors import Unavailable
from keyturn_server.domain.events import EventKind
from keyturn_server.store.postgres import APPEND_LOCK
from keyturn_server.store.sql import SqlRepository
from tests.harness import Harness, fails, failure

pytestmark = pytest.mark.postgres


async def test_a_table_locked_in_the_database_does_not_freeze_the_server(
    server: Harness, logs_hold_no_secrets: io.StringIO
) -> None:
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    made = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    validate = handles_pb2.ValidateHandleRequest(token=made.token)
    health = health_pb2_grpc.HealthStub(server.channel())
    loop = asyncio.get_running_loop()
    url = server.settings.store
    assert url is not None
    with psycopg.connect(url) as dba:  # a transaction, open until the block ends
        dba.execute("LOCK TABLE handles IN ACCESS EXCLUSIVE MODE")

        started = loop.time()
        refused = await fails(server.admin.handles.ValidateHandle(validate, timeout=10))
        assert refused.code == grpc.StatusCode.UNAVAILABLE, refused
        assert refused.reason == "STORE_LOCKED", refused
        assert "lock" in refused.message
        # Many callers at once: each is told at once, not after a wait of its own.
        many = await asyncio.gather(
            *(fails(server.admin.handles.ValidateHandle(validate, timeout=10)) for _ in range(50))
        )
        assert {f.reason for f in many} == {"STORE_LOCKED"}
        assert loop.time() - started < 3  # the first waited for the lock up to a second

        # Everything that does not need the locked table is served meanwhile.
        checked = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        # The scheduler's deadlines are in the locked table too: that is said, but a lock
        # that holds every replica alike must not drain them all (it did, whenever the
        # health loop ran during the lock: the check above failed once in CI).
        report = await server.admin.admin.GetHealth(
            admin_pb2.GetHealthRequest(component="scheduler"), timeout=5
        )
        [scheduler] = report.health.components
        assert scheduler.status == admin_pb2.SERVING_STATUS_SERVING, scheduler
        assert any("deadlines cannot be read" in r for r in scheduler.reasons), scheduler
        got = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id), timeout=2)
        assert got.id == key.id
        sealed = await server.admin.keys.Encrypt(
            keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"still served"), timeout=2
        )
        assert sealed.ciphertext

    # The lock is gone (the transaction ended): the handle is served again within the
    # second its statement is held back, with nothing counted for the refused calls.
    outcomes = []
    for _ in range(25):
        try:
            answer = await server.admin.handles.ValidateHandle(validate, timeout=5)
        except grpc.aio.AioRpcError as error:
            outcomes.append(error.code().name)
            await asyncio.sleep(0.2)
            continue
        outcomes.append("OK")
        break
    assert outcomes[-1] == "OK" and set(outcomes) <= {"UNAVAILABLE", "OK"}, outcomes
    assert answer.validation.valid
    stored = await server.admin.handles.GetHandle(
        handles_pb2.GetHandleRequest(handle_id=made.handle.id)
    )
    assert stored.usage_count == 1
    # The scheduler's deadlines are read again once their statements' second is over.
    for _ in range(25):
        report = await server.admin.admin.GetHealth(
            admin_pb2.GetHealthRequest(component="scheduler"), timeout=5
        )
        [scheduler] = report.health.components
        if not scheduler.reasons:
            break
        await asyncio.sleep(0.2)
    assert not scheduler.reasons, scheduler
    # Said when it starts and when it ends (for reads, for writes), not once per call.
    said = [json.loads(line)["msg"] for line in logs_hold_no_secrets.getvalue().splitlines()]
    waits = [m for m in said if "wait on the database" in m]
    again = [m for m in said if m.endswith("are served again")]
    assert 1 <= len(waits) <= 2 and len(again) == len(waits), (waits, again)


async def test_scheduled_rotations_and_validations_of_the_same_handles_never_deadlock(
    server: Harness,
) -> None:
    """The scheduler rotates a hundred handles in one transaction while callers validate
    them. It locked them one by one in deadline order, appending events in between;
    validations lock theirs in id order and then append: the two waited on each other
    until the lock timeout, and every validation was refused STORE_LOCKED for a second
    after (hundreds of refusals in a few seconds). Now the scheduler locks its handles
    first, in id order, and the validations only wait their turn."""
    await server.set_policies(max_concurrent_handles=1000, rate_limit_per_handle=100_000)
    busy = admin_pb2.HandleTypeConfig(
        algorithm="sha256",
        handle_length=32,
        rotation_interval=duration_pb2.Duration(seconds=1800),
        warning_threshold=duration_pb2.Duration(seconds=300),
        max_lifetime=duration_pb2.Duration(seconds=4 * 3600),
        max_usage=1_000_000,
    )
    config = await server.admin.admin.GetConfig(admin_pb2.GetConfigRequest())
    await server.admin.admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(handle_types={"busy": busy}),
            update_mask={"paths": ["handle_types.busy"]},
            etag=config.etag,
        )
    )
    made = await asyncio.gather(
        *(
            server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="busy"))
            for _ in range(150)
        )
    )
    tokens = [m.token for m in made]
    refused: list[str] = []
    done = asyncio.Event()

    async def validate(first: int) -> None:
        index = first
        while not done.is_set():
            index = (index + 7) % len(tokens)
            request = handles_pb2.ValidateHandleRequest(token=tokens[index])
            try:
                await server.admin.handles.ValidateHandle(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                refused.append(f"{error.code().name}: {error.details()}")

    callers = [asyncio.create_task(validate(i)) for i in range(48)]
    try:
        server.clock.advance(timedelta(minutes=30))  # every handle is due to rotate
        await server.settle()
    finally:
        done.set()
        await asyncio.gather(*callers)
    assert refused == [], refused[:3]
    events = await server.events()
    assert sum(e.kind is EventKind.ROTATED for e in events) == len(tokens)
    # A validation that waited for a rotation's commit took its secret for reused.
    assert not [e for e in events if e.kind is EventKind.REVOKED]


async def test_key_uses_counted_while_the_keys_table_is_locked_are_kept_for_the_next_flush(
    server: Harness,
) -> None:
    """Uses of a key are counted in memory and flushed every few seconds. A flush refused
    by the database (here a locked table; as well a restart, or a deadlock with another
    replica's flush) used to drop what it carried."""
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    for _ in range(5):
        await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"x"))
    assert server.app is not None and server.app.services is not None
    keys = server.app.services.keys
    url = server.settings.store
    assert url is not None
    with psycopg.connect(url) as dba:
        dba.execute("LOCK TABLE keys IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(Unavailable):
            await keys.flush_usage()
    await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"x"))
    for _ in range(30):  # the unit of work is held back for a second after the lock
        try:
            await keys.flush_usage()
            break
        except Unavailable:
            await asyncio.sleep(0.1)
    stored = await server.app.store.report(lambda repo: repo.get_key(key.id))
    assert stored is not None and stored.usage_count == 6


async def test_a_handle_row_held_by_another_transaction_delays_only_its_own_validations(
    server: Harness,
) -> None:
    """A DBA's transaction left open on one handle's row (or a stalled replica's, until
    the server ends it). Validations share one unit of work at a time: each unit that
    met the row waited out the lock timeout and was refused with everything in it, so
    most validations of every other handle were refused too. Now only the held
    handle's are, and it validates again once the row is free. Its many callers wait
    for two pooled sessions between them, not for all of them: the other handles'
    validations took up to two seconds while twenty callers held every session."""
    held = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    others = [
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
        for _ in range(10)
    ]
    outcomes: dict[str, list[str]] = {"held": [], "others": []}
    slowest = 0.0
    done = asyncio.Event()

    async def validate(token: str, which: str) -> None:
        nonlocal slowest
        loop = asyncio.get_running_loop()
        while not done.is_set():
            request = handles_pb2.ValidateHandleRequest(token=token)
            started = loop.time()
            try:
                answer = await server.admin.handles.ValidateHandle(request, timeout=10)
                outcomes[which].append("OK" if answer.validation.valid else "INVALID")
                if which == "others":
                    slowest = max(slowest, loop.time() - started)
            except grpc.aio.AioRpcError as error:
                outcomes[which].append(failure(error).reason or error.code().name)
            await asyncio.sleep(0.01)

    url = server.settings.store
    assert url is not None
    with psycopg.connect(url) as dba:  # a transaction, open until the block ends
        dba.execute("SELECT id FROM handles WHERE id = %s FOR UPDATE", (held.handle.id,))
        callers = [asyncio.create_task(validate(o.token, "others")) for o in others]
        callers += [asyncio.create_task(validate(held.token, "held")) for _ in range(20)]
        await asyncio.sleep(2.5)
        done.set()
        await asyncio.gather(*callers)
    assert set(outcomes["others"]) == {"OK"}, collections.Counter(outcomes["others"])
    assert set(outcomes["held"]) <= {"STORE_ROW_LOCKED", "STORE_LOCKED"}, set(outcomes["held"])
    assert slowest < 1.0, slowest

    request = handles_pb2.ValidateHandleRequest(token=held.token)
    for _ in range(30):  # refused at once for a second after its wait, then served
        try:
            answer = await server.admin.handles.ValidateHandle(request, timeout=5)
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    assert answer.validation.valid


async def test_a_row_held_elsewhere_refuses_only_the_calls_that_need_it(server: Harness) -> None:
    """A lock on a row belongs to that row: the call that waited for it is refused, and
    says what it met; the same call on another handle is served at once. Before, a row
    lock's timeout was taken for a table's (STORE_LOCKED, "VACUUM FULL, CLUSTER...") and
    held back every RemoveHandle for a second."""
    held, free = [
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
        for _ in range(2)
    ]
    url = server.settings.store
    assert url is not None
    with psycopg.connect(url) as dba:
        dba.execute("SELECT id FROM handles WHERE id = %s FOR UPDATE", (held.handle.id,))
        refused = await fails(
            server.admin.handles.RemoveHandle(
                handles_pb2.RemoveHandleRequest(handle_id=held.handle.id), timeout=10
            )
        )
        assert refused.code == grpc.StatusCode.UNAVAILABLE
        assert refused.reason == "STORE_ROW_LOCKED", refused
        assert "held by another transaction" in refused.message
        removed = await server.admin.handles.RemoveHandle(
            handles_pb2.RemoveHandleRequest(handle_id=free.handle.id), timeout=10
        )
        assert removed.status == resources_pb2.HANDLE_STATUS_REVOKED


def hold_the_append_lock(url: str, turn: threading.Event, seconds: float) -> None:
    """(A thread:) another transaction's turn on the append lock: take it, hold it for
    ``seconds`` while working, commit. ``turn`` is set once it waits or holds."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET application_name = 'a replica committing'")
        with conn.transaction():
            turn.set()
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            conn.execute("SELECT pg_sleep(%s)", (seconds,))  # active: working, not stalled


async def test_a_queue_of_commits_on_the_append_lock_is_waited_for(server: Harness) -> None:
    """Replicas' transactions take the append lock one after another: a write behind a
    queue of them for over a second was refused STORE_LOCKED, as if a table were locked
    (VACUUM FULL...), although the lock changed hands all the while. Now it waits on
    while the holder changes (up to five seconds)."""
    url = server.settings.store
    assert url is not None
    loop = asyncio.get_running_loop()
    holders = []
    for _ in range(3):  # three transactions in turn, half a second each
        turn = threading.Event()
        holders.append(loop.run_in_executor(None, hold_the_append_lock, url, turn, 0.5))
        await asyncio.to_thread(turn.wait)
        await asyncio.sleep(0.05)  # its wait has begun: the next queues behind it
    started = loop.time()
    made = await server.admin.keys.GenerateKey(
        keys_pb2.GenerateKeyRequest(type="session"), timeout=10
    )
    assert made.key.id and loop.time() - started > 1.0  # it did wait its turn
    await asyncio.gather(*holders)


async def test_a_replica_stalled_holding_the_append_lock_is_named_not_taken_for_a_table(
    server: Harness,
) -> None:
    """A replica paused in the middle of a transaction (SIGSTOP, a frozen VM) holds the
    append lock until the database ends its session. The caller is told that, at once
    after the first second, and the next calls of the same kind are refused at once."""
    url = server.settings.store
    assert url is not None
    loop = asyncio.get_running_loop()
    with psycopg.connect(url) as paused:  # a transaction, open until the block ends
        paused.execute("SET application_name = 'a paused replica'")
        paused.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        await asyncio.sleep(1.1)  # idle in its transaction for over a second
        started = loop.time()
        generate = keys_pb2.GenerateKeyRequest(type="session")
        refused = await fails(server.admin.keys.GenerateKey(generate, timeout=10))
        assert refused.code == grpc.StatusCode.UNAVAILABLE, refused
        assert refused.reason == "STORE_LOCKED"
        assert "a paused replica" in refused.message and "stalled" in refused.message
        assert "VACUUM" not in refused.message
        assert loop.time() - started < 2.5
        again = await fails(server.admin.keys.GenerateKey(generate, timeout=10))
        assert again.reason == "STORE_LOCKED" and loop.time() - started < 3
    await asyncio.sleep(1.1)  # the second for which such calls are held back
    made = await server.admin.keys.GenerateKey(generate, timeout=10)  # served once it ends
    assert made.key.id


async def test_a_replica_stalled_in_a_transaction_holds_the_others_writes_for_seconds(
    server: Harness, tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica paused in the middle of a transaction holds the append lock (and its row
    locks) until the database ends its idle session: every event and audit append on
    every other replica was refused for half a minute. Keyturn's transactions never sit
    idle between statements for seconds unless their process is stalled, so their
    sessions are ended after five. The stalled replica's own caller, once it runs again,
    is told UNAVAILABLE (nothing was kept); it was an internal error."""
    other = Harness(tmp_path / "b", clock, store=server.settings.store)
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy(server.data_dir / "admin.token", tmp_path / "b" / "admin.token")
    await other.start()
    stall, stalled = threading.Event(), threading.Event()
    serialise = SqlRepository._serialise_append

    def stalling(repo: SqlRepository) -> None:
        serialise(repo)
        if stall.is_set():  # once: the next append, the other replica's
            stall.clear()
            stalled.set()
            time.sleep(10)  # SIGSTOP: the session sits idle in its transaction

    monkeypatch.setattr(SqlRepository, "_serialise_append", stalling)
    generate = keys_pb2.GenerateKeyRequest(type="session")
    stall.set()
    paused = asyncio.ensure_future(fails(other.admin.keys.GenerateKey(generate, timeout=20)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.to_thread(stalled.wait, 5)
    outcomes = []
    while loop.time() - started < 9:
        try:
            await server.admin.keys.GenerateKey(generate, timeout=10)
        except grpc.aio.AioRpcError as error:
            outcomes.append(failure(error).reason)
            await asyncio.sleep(0.2)
            continue
        outcomes.append("OK")
        break
    try:
        # Held back by its lock (the owner's row, which the stalled call locked first,
        # or the append lock), then served.
        assert outcomes[-1] == "OK" and len(outcomes) > 1, outcomes
        assert set(outcomes[:-1]) <= {"STORE_LOCKED", "STORE_ROW_LOCKED"}, outcomes
        assert loop.time() - started < 7.5
        told = await paused
        assert told.code == grpc.StatusCode.UNAVAILABLE, told
        assert "idle" in told.message
    finally:
        await other.stop()


async def test_only_a_quarter_of_the_commit_threads_wait_on_for_the_append_lock(
    server: Harness,
) -> None:
    """Each write that waits on for the append lock holds a commit thread and a pooled
    session, which writes that append nothing (validations) need too. Past the first
    second, two of the eight wait on; the others are refused STORE_BEHIND at once."""
    url = server.settings.store
    assert url is not None
    owners = []
    for name in ("billing", "orders", "search", "mail"):
        made = await server.admin.admin.CreateAccessToken(
            admin_pb2.CreateAccessTokenRequest(name=name, role=resources_pb2.ROLE_SERVICE)
        )
        owners.append(server.client(made.token))
    loop = asyncio.get_running_loop()
    turn = threading.Event()
    holder = loop.run_in_executor(None, hold_the_append_lock, url, turn, 2.5)
    await asyncio.to_thread(turn.wait)
    await asyncio.sleep(0.05)
    generate = keys_pb2.GenerateKeyRequest(type="session")
    results = await asyncio.gather(
        *(owner.keys.GenerateKey(generate, timeout=10) for owner in owners),
        return_exceptions=True,
    )
    await holder
    made = [r for r in results if isinstance(r, keys_pb2.GenerateKeyResponse)]
    refused = [failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(made) == 2, results
    assert [(f.code, f.reason) for f in refused] == [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "STORE_BEHIND")
    ] * 2
    assert all(f.retry_after for f in refused)
