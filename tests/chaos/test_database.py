"""The database restarts, goes away for a while, kills sessions, or fails over to a
promoted standby, under load: replicas answer UNAVAILABLE (retryable) while it is gone and
never INTERNAL, say NOT_SERVING while they cannot reach it, and recover by themselves:
every connection (pool, reads, LISTEN, the scheduler's lock) comes back, the scheduler
runs again, and every watcher on every replica sees every event exactly once, in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from grpc_health.v1 import health_pb2

from keyturn.v1 import admin_pb2, handles_pb2
from tests.chaos.conftest import ReplicaFactory
from tests.chaos.postgres import Cluster, throwaway_root
from tests.chaos.replicas import (
    Outcomes,
    Replica,
    Watcher,
    add_blink_type,
    admin_token,
    assert_every_watcher_saw_every_event,
    latest_sequence,
    load,
    single_leader,
    start_all,
)

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Seconds until ``check`` holds (fails after ``within``)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not {what} after {within}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _all_serving(replicas: list[Replica], status: int = SERVING) -> bool:
    return all([await r.serving() == status for r in replicas])


class Scenario:
    """Three replicas under load, a watcher on each, and what they observed."""

    def __init__(self, cluster: Cluster, database: str, replicas: list[Replica]) -> None:
        self.cluster = cluster
        self.database = database
        self.replicas = replicas
        self.outcomes = Outcomes()
        self.stop = asyncio.Event()
        self.watchers: list[Watcher] = []
        self.tasks: list[asyncio.Future[None]] = []

    async def begin(self) -> None:
        token = admin_token(self.replicas)
        for replica in self.replicas:
            replica.connect(token)
        after = latest_sequence(self.cluster, self.database)
        self.watchers = [Watcher(r, after) for r in self.replicas]
        for watcher in self.watchers:
            watcher.start()
        for replica in self.replicas:
            for _ in range(2):
                self.tasks.append(
                    asyncio.ensure_future(load(replica.api, self.outcomes, self.stop))
                )
        await asyncio.sleep(1)

    async def writes_succeed_everywhere(self) -> bool:
        for replica in self.replicas:
            try:
                await replica.api.handles.GenerateHandle(
                    handles_pb2.GenerateHandleRequest(type="session"), timeout=5
                )
            except Exception:
                return False
        return True

    async def scheduler_rotates(self, within: float) -> float:
        """Seconds until a handle issued now is rotated (blink: after 2 s)."""
        await add_blink_type(self.replicas[0].api)
        issued = await self.replicas[1].api.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="blink")
        )
        started = time.monotonic()
        watcher = self.watchers[2]

        async def rotated() -> bool:
            return any(
                e.kind == 2 and e.handle.id == issued.handle.id  # EVENT_KIND_ROTATED
                for e in watcher.events
            )

        await _until(rotated, within, "rotated")
        return time.monotonic() - started

    async def end(self) -> int:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        self.outcomes.assert_no_internal()
        events = await assert_every_watcher_saw_every_event(
            self.watchers, self.cluster, self.database
        )
        for watcher in self.watchers:
            await watcher.stop()
        return events


async def _scenario(
    cluster: Cluster, make_replicas: ReplicaFactory, url: str, database: str
) -> Scenario:
    replicas = make_replicas(3, url)
    await start_all(replicas)
    scenario = Scenario(cluster, database, replicas)
    await scenario.begin()
    return scenario


async def test_a_restart_and_killed_sessions_under_load_are_survived(
    cluster: Cluster,
    database: str,
    make_replicas: ReplicaFactory,
    record_property: pytest.RecordProperty,
) -> None:
    s = await _scenario(cluster, make_replicas, cluster.url(database), database)
    # Every session of the database dies: pools, readers, listeners, the lock.
    for (pid,) in cluster.query(
        database,
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ):
        cluster.terminate(database, pid)
    after_kill = await _until(s.writes_succeed_everywhere, 10, "writing after killed sessions")
    await asyncio.sleep(1)

    restarted = time.monotonic()
    cluster.restart("fast")
    after_restart = await _until(s.writes_succeed_everywhere, 15, "writing after a restart")
    after_restart += time.monotonic() - restarted - after_restart
    await _until(lambda: _all_serving(s.replicas), 10, "serving after a restart")
    await single_leader(s.replicas, within=5)
    rotation = await s.scheduler_rotates(within=10)
    events = await s.end()
    record_property(
        "figures",
        f"chaos: sessions killed -> writes on every replica after {after_kill:.2f} s; "
        f"pg_ctl restart -m fast -> after {after_restart:.2f} s; {events} events seen once "
        f"by 3 watchers; {dict(s.outcomes.codes)}",
    )
    assert rotation < 5


async def test_while_the_database_is_down_calls_fail_fast_unavailable_and_health_says_so(
    cluster: Cluster,
    database: str,
    make_replicas: ReplicaFactory,
    record_property: pytest.RecordProperty,
) -> None:
    s = await _scenario(cluster, make_replicas, cluster.url(database), database)
    stopped = time.monotonic()
    cluster.stop("fast")
    try:
        noticed = await _until(
            lambda: _all_serving(s.replicas, NOT_SERVING), 5, "NOT_SERVING while down"
        )
        for replica in s.replicas:  # the detailed health answers too, and says why
            report = await replica.api.admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=3)
            assert report.health.status == admin_pb2.SERVING_STATUS_NOT_SERVING
            [store] = [c for c in report.health.components if c.name == "store"]
            assert not store.store.reachable and "unreachable" in store.reasons[0]
        before = s.outcomes.codes["UNAVAILABLE"]
        await asyncio.sleep(1.5)
        assert s.outcomes.codes["UNAVAILABLE"] > before  # the load kept being answered
        assert s.outcomes.slowest_failure < 2.0, s.outcomes.slowest_failure
        assert set(s.outcomes.reasons) <= {"UNAVAILABLE:STORE_UNAVAILABLE"}, s.outcomes.reasons
    finally:
        cluster.start()
    started = time.monotonic()
    back = await _until(lambda: _all_serving(s.replicas), 10, "SERVING once it is back")
    await _until(s.writes_succeed_everywhere, 10, "writing once it is back")
    writing = time.monotonic() - started
    await single_leader(s.replicas, within=5)
    rotation = await s.scheduler_rotates(within=10)
    events = await s.end()
    record_property(
        "figures",
        f"chaos: database down {time.monotonic() - stopped:.0f} s -> NOT_SERVING after "
        f"{noticed:.2f} s, slowest failed call {s.outcomes.slowest_failure:.2f} s; back -> "
        f"SERVING after {back:.2f} s, writing after {writing:.2f} s; {events} events seen once",
    )
    assert rotation < 5


async def test_a_failover_to_a_promoted_standby_is_survived(
    make_replicas: ReplicaFactory, record_property: pytest.RecordProperty
) -> None:
    """Primary and synchronous standby; replicas name both hosts and ask for the one
    that takes writes. The primary crashes; the standby is promoted 2 s later."""
    with throwaway_root() as root:
        primary = Cluster(root, "primary")
        primary.init()
        primary.start()
        database = primary.create_database()
        standby = primary.standby()
        url = (
            f"postgresql://keyturn@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/"
            f"{database}?target_session_attrs=read-write&connect_timeout=2"
        )
        s = await _scenario(primary, make_replicas, url, database)
        crashed = time.monotonic()
        primary.stop("immediate")
        await _until(lambda: _all_serving(s.replicas, NOT_SERVING), 5, "NOT_SERVING")
        await asyncio.sleep(2)
        standby.promote()
        promoted = time.monotonic()
        await _until(lambda: _all_serving(s.replicas), 15, "SERVING after the failover")
        await _until(s.writes_succeed_everywhere, 10, "writing after the failover")
        writing = time.monotonic() - promoted
        await single_leader(s.replicas, within=5)
        rotation = await s.scheduler_rotates(within=10)
        s.cluster = standby
        events = await s.end()
        record_property(
            "figures",
            f"chaos: failover to a promoted standby -> writing {writing:.2f} s after the "
            f"promotion ({promoted - crashed:.1f} s after the crash); a new handle rotated "
            f"{rotation:.2f} s after issue (2 s interval); {events} events seen once by 3 watchers",
        )
