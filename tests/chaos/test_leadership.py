"""The scheduler's leader dies, loses its lock connection, or stalls: one other replica
takes over within seconds, never two act at once, every due warning and rotation still
happens once and in order, and health says what is going on."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2
from tests.chaos.conftest import ReplicaFactory
from tests.chaos.postgres import Cluster
from tests.chaos.replicas import (
    LEADER_LOCK,
    Replica,
    Watcher,
    add_blink_type,
    admin_token,
    assert_every_watcher_saw_every_event,
    latest_sequence,
    leaders,
    single_leader,
    start_all,
)

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
E = events_pb2
#: The issue's bound: the first due rotation after a leader failure, at most this late.
FAILOVER_BOUND = 5.0


def _utc(stamp: datetime) -> float:
    """A protobuf Timestamp's naive UTC datetime, in seconds since the epoch."""
    return stamp.replace(tzinfo=UTC).timestamp()


class Rotations:
    """Due times and rotations of the blink handles, as a watcher saw them."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def rotations(self) -> list[tuple[str, float, float]]:
        """(handle id, when it was due, when it happened) of every ROTATED event."""
        due: dict[str, float] = {}
        found = []
        for event in self.watcher.events:
            handle = event.handle
            if handle.type != "blink":
                continue
            if event.kind == E.EVENT_KIND_ROTATED and handle.id in due:
                found.append((handle.id, due[handle.id], _utc(event.time.ToDatetime())))
            if event.kind in (E.EVENT_KIND_CREATED, E.EVENT_KIND_ROTATED):
                due[handle.id] = _utc(handle.rotate_time.ToDatetime())
        return found

    async def first_after(self, moment: float, within: float) -> tuple[float, float]:
        """The first rotation that happened after ``moment``: (due, happened)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for _, due, happened in self.rotations():
                if happened > moment:
                    return due, happened
            await asyncio.sleep(0.05)
        raise AssertionError(f"no rotation within {within}s of the failure")

    def assert_never_doubled(self) -> None:
        """Two leaders acting would rotate a handle twice for one deadline: its
        rotations would come closer together than its interval (2 s)."""
        times: dict[str, list[float]] = defaultdict(list)
        for handle_id, _, happened in self.rotations():
            times[handle_id].append(happened)
        for handle_id, seen in times.items():
            gaps = [b - a for a, b in itertools.pairwise(seen)]
            assert all(gap > 1.5 for gap in gaps), f"{handle_id} rotated twice: {gaps}"

    def worst_lateness(self, after: float) -> float:
        """How late the latest-acted rotation due after ``after`` was."""
        return max((h - d for _, d, h in self.rotations() if d > after), default=0.0)


async def _blinking(replicas: list[Replica], count: int = 6) -> None:
    """``count`` handles that rotate every 2 s, spread so one is due every 2/count s."""
    await add_blink_type(replicas[0].api)
    for i in range(count):
        await replicas[i % len(replicas)].api.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="blink")
        )
        await asyncio.sleep(2 / count)


async def _cluster_of_three(
    cluster: Cluster, database: str, make_replicas: ReplicaFactory, *extra: str
) -> list[Replica]:
    replicas = make_replicas(3, cluster.url(database), *extra)
    await start_all(replicas)
    token = admin_token(replicas)
    for replica in replicas:
        replica.connect(token)
    return replicas


async def _failover(
    cluster: Cluster,
    database: str,
    replicas: list[Replica],
    fail: str,
) -> tuple[float, float, Replica]:
    """Make the leader fail (``fail``: "kill", "lock", or "freeze": SIGSTOP until the new
    leader acts, then SIGCONT); returns (seconds from the failure to the first due
    rotation, seconds until exactly one leader, the new one)."""
    leader, _ = await single_leader(replicas, within=10)
    survivors = [r for r in replicas if r is not leader] if fail != "lock" else replicas
    watchers = [Watcher(r, latest_sequence(cluster, database)) for r in survivors]
    for watcher in watchers:
        watcher.start()
    await _blinking(survivors)
    rotations = Rotations(watchers[0])
    await rotations.first_after(time.time(), within=10)  # the leader is at work

    failed_at = time.time()
    if fail == "kill":
        leader.kill()
    elif fail == "freeze":
        os.kill(leader.pid, signal.SIGSTOP)
    else:
        pid = cluster.lock_holder(database, LEADER_LOCK)
        assert pid is not None, "nobody holds the scheduler's lock"
        assert cluster.terminate(database, pid)
    try:
        due, happened = await rotations.first_after(failed_at, within=30)
        failover = happened - max(failed_at, due)
        new_leader, _ = await single_leader(survivors, within=FAILOVER_BOUND)
        settled = time.time() - failed_at
    finally:
        if fail == "freeze":
            os.kill(leader.pid, signal.SIGCONT)
    if fail == "freeze":  # awake again, it must find itself superseded, and act on nothing
        survivors = replicas
    # Exactly one leader, and it stays so; rotations due from now on are on time.
    await asyncio.sleep(2)
    assert [r.name for r in await leaders(survivors)] == [new_leader.name]
    assert rotations.worst_lateness(failed_at + FAILOVER_BOUND) < 1.0
    rotations.assert_never_doubled()
    await assert_every_watcher_saw_every_event(watchers, cluster, database)
    for watcher in watchers:
        await watcher.stop()
    return failover, settled, new_leader


async def test_kill_9_of_the_leader_hands_the_scheduler_over_within_5s(
    cluster: Cluster,
    database: str,
    make_replicas: ReplicaFactory,
    record_property: pytest.RecordProperty,
) -> None:
    replicas = await _cluster_of_three(cluster, database, make_replicas)
    failover, _, _ = await _failover(cluster, database, replicas, "kill")
    record_property(
        "figures", f"chaos: kill -9 of the leader -> first due rotation {failover:.2f} s later"
    )
    assert failover < FAILOVER_BOUND


async def test_a_killed_lock_connection_leaves_exactly_one_leader_within_5s(
    cluster: Cluster,
    database: str,
    make_replicas: ReplicaFactory,
    record_property: pytest.RecordProperty,
) -> None:
    replicas = await _cluster_of_three(cluster, database, make_replicas)
    failover, settled, _ = await _failover(cluster, database, replicas, "lock")
    record_property(
        "figures",
        f"chaos: leader's lock connection killed -> first due rotation {failover:.2f} s later, "
        f"one leader after {settled:.2f} s",
    )
    assert failover < FAILOVER_BOUND


async def test_a_frozen_leader_loses_the_scheduler_once_its_lease_runs_out(
    cluster: Cluster,
    database: str,
    make_replicas: ReplicaFactory,
    record_property: pytest.RecordProperty,
) -> None:
    """SIGSTOP the leader (a paused VM): its session lives on and keeps the lock, but it
    gives no sign of life, so after the lease's TTL a follower ends that session and
    takes over; woken, the old leader acts on nothing and does not lead again."""
    ttl = 3.0
    replicas = await _cluster_of_three(
        cluster, database, make_replicas, "--scheduler-lease-ttl", f"{ttl:g}s"
    )
    failover, settled, new_leader = await _failover(cluster, database, replicas, "freeze")
    record_property(
        "figures",
        f"chaos: leader frozen (SIGSTOP), lease TTL {ttl:g} s -> first due rotation "
        f"{failover:.2f} s later, one leader after {settled:.2f} s",
    )
    assert failover < ttl + FAILOVER_BOUND
    assert [r.name for r in await leaders(replicas)] == [new_leader.name]


async def test_followers_that_lost_their_lock_connections_still_take_over(
    cluster: Cluster, database: str, make_replicas: ReplicaFactory
) -> None:
    """Their lock sessions killed first, then the leader dies: one of them must lead."""
    replicas = await _cluster_of_three(cluster, database, make_replicas)
    leader, _ = await single_leader(replicas, within=10)
    holder = cluster.lock_holder(database, LEADER_LOCK)
    sessions = cluster.query(
        database,
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s "
        "AND pid <> pg_backend_pid()",
        (database, holder),
    )
    for (pid,) in sessions:  # every other session: pools, readers, listeners, waiters
        cluster.terminate(database, pid)
    await asyncio.sleep(0.5)
    leader.kill()
    survivors = [r for r in replicas if r is not leader]
    _, settled = await single_leader(survivors, within=FAILOVER_BOUND)
    assert settled < FAILOVER_BOUND


async def test_a_stalled_leader_shows_in_every_replicas_health_then_catches_up_in_order(
    cluster: Cluster, database: str, make_replicas: ReplicaFactory
) -> None:
    """SIGSTOP the leader (a paused VM, a stuck process): it keeps its lock, nothing is
    scheduled, and every replica's health says so from the store; once it resumes, each
    missed warning and rotation happens, in order (EXPIRING, then ROTATED)."""
    replicas = await _cluster_of_three(
        cluster, database, make_replicas, "--scheduler-max-lag", "2s"
    )
    leader, _ = await single_leader(replicas, within=10)
    others = [r for r in replicas if r is not leader]
    watcher = Watcher(others[0], latest_sequence(cluster, database))
    watcher.start()
    await add_blink_type(others[0].api)
    issued = await others[0].api.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="blink")
    )
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(4)  # the warning (1 s) and the rotation (2 s) are overdue
        for replica in others:
            part = await replica.scheduler()
            assert part.status == admin_pb2.SERVING_STATUS_NOT_SERVING, replica.name
            assert part.scheduler.lag.ToTimedelta().total_seconds() > 2
            assert any("overdue" in reason for reason in part.reasons), part.reasons
            assert not part.scheduler.leader
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kinds = [
            E.EventKind.Name(e.kind) for e in watcher.events if e.handle.id == issued.handle.id
        ]
        if "EVENT_KIND_ROTATED" in kinds:
            break
        await asyncio.sleep(0.1)
    assert kinds[:3] == ["EVENT_KIND_CREATED", "EVENT_KIND_EXPIRING", "EVENT_KIND_ROTATED"]
    await asyncio.sleep(1.5)
    for replica in replicas:
        part = await replica.scheduler()
        assert part.status == admin_pb2.SERVING_STATUS_SERVING, (replica.name, part.reasons)
    await watcher.stop()
