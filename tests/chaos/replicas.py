"""Replicas as real `keyturn serve` processes on one PostgreSQL database, and what the
chaos tests observe through them: load and its outcomes, watchers on every replica, health,
the scheduler's leader, and the event log as stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2
from tests.chaos.postgres import Cluster
from tests.harness import Client
from tests.process import ServerProcess

E = events_pb2
#: The scheduler's session advisory lock (store/postgres): who holds it leads.
LEADER_LOCK = 0x6B74_0002
#: A handle type whose life fits in a test: rotation every 2 s, a warning 1 s before.
BLINK = {
    "algorithm": "sha256",
    "handle_length": 32,
    "rotation_interval": {"seconds": 2},
    "warning_threshold": {"seconds": 1},
    "max_lifetime": {"seconds": 600},
    "max_usage": 100000,
}


class Replica(ServerProcess):
    """One `keyturn serve --store postgresql://...` with a data dir of its own."""

    def __init__(self, data_dir: Path, store: str, *extra: str) -> None:
        super().__init__(data_dir, "--store", store, "--heartbeat", "1s", *extra)
        self.name = data_dir.name
        self.channel: grpc.aio.Channel | None = None
        self.client: Client | None = None

    def connect(self, token: str) -> Client:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.client = Client(self.channel, token)
        return self.client

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    @property
    def api(self) -> Client:
        assert self.client is not None
        return self.client

    async def serving(self, service: str = "") -> int:
        """The standard health service's answer (-1 when it does not answer)."""
        assert self.channel is not None
        try:
            reply = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.aio.AioRpcError:
            return -1
        return int(reply.status)

    async def scheduler(self) -> admin_pb2.ComponentHealth:
        reply = await self.api.admin.GetHealth(
            admin_pb2.GetHealthRequest(component="scheduler"), timeout=3
        )
        [part] = reply.health.components
        return part


async def start_all(replicas: list[Replica], within: float = 60) -> None:
    """Start every replica at once (a bootstrap race on an empty database)."""
    for replica in replicas:
        replica.spawn()
    await asyncio.gather(*(r.wait_serving(within) for r in replicas))


def admin_token(replicas: list[Replica]) -> str:
    """The one admin token, from whichever replica created it."""
    found = [r.data_dir / "admin.token" for r in replicas if (r.data_dir / "admin.token").exists()]
    assert len(found) == 1, f"admin.token written by {len(found)} replicas"
    return found[0].read_text().strip()


async def leaders(replicas: list[Replica]) -> list[Replica]:
    """The replicas whose health says they lead the scheduler."""
    found = []
    for replica in replicas:
        part = await replica.scheduler()
        if part.scheduler.leader:
            found.append(replica)
    return found


async def single_leader(replicas: list[Replica], within: float) -> tuple[Replica, float]:
    """Wait until exactly one replica says it leads, and holds the database's lock;
    (it, seconds waited)."""
    started = time.monotonic()
    while True:
        found = await leaders(replicas)
        if len(found) == 1:
            return found[0], time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"{len(found)} leaders after {within}s: {[r.name for r in found]}")
        await asyncio.sleep(0.1)


async def add_blink_type(client: Client) -> None:
    config = await client.admin.GetConfig(admin_pb2.GetConfigRequest())
    await client.admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(handle_types={"blink": admin_pb2.HandleTypeConfig(**BLINK)}),
            update_mask={"paths": ["handle_types.blink"]},
            etag=config.etag,
        )
    )


@dataclass
class Outcomes:
    """Status codes of every call the load made, and how long the failures took."""

    codes: Counter[str] = field(default_factory=Counter)
    slowest_failure: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)

    def record(self, code: grpc.StatusCode, seconds: float, reason: str = "") -> None:
        self.codes[code.name] += 1
        if code is not grpc.StatusCode.OK:
            self.slowest_failure = max(self.slowest_failure, seconds)
            self.reasons[f"{code.name}:{reason}"] += 1

    def assert_no_internal(self) -> None:
        bad = {c: n for c, n in self.codes.items() if c in ("INTERNAL", "UNKNOWN")}
        assert not bad, f"calls failed with {bad}: {dict(self.reasons)}"


async def load(client: Client, outcomes: Outcomes, stop: asyncio.Event) -> None:
    """Issue and validate handles until stopped; every outcome is recorded."""
    token = ""
    while not stop.is_set():
        started = time.monotonic()
        try:
            if not token:
                issued = await client.handles.GenerateHandle(
                    handles_pb2.GenerateHandleRequest(type="session"), timeout=10
                )
                token = issued.token
            else:
                await client.handles.ValidateHandle(
                    handles_pb2.ValidateHandleRequest(token=token), timeout=10
                )
            outcomes.record(grpc.StatusCode.OK, time.monotonic() - started)
        except grpc.aio.AioRpcError as error:
            outcomes.record(error.code(), time.monotonic() - started, _reason(error))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.01)


def _reason(error: grpc.aio.AioRpcError) -> str:
    from keyturn._errors import from_rpc_error

    with contextlib.suppress(Exception):
        return from_rpc_error(error).reason
    return ""


class Watcher:
    """A WatchExpiring stream of handle events on one replica, resumed from the last
    sequence it saw whenever it breaks, as a client does. Keeps every event it got."""

    def __init__(self, replica: Replica, after: int) -> None:
        self.replica = replica
        self.events: list[events_pb2.ExpiryEvent] = []
        self.arrived: list[float] = []
        self.after = after
        self.resumes = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    @property
    def sequences(self) -> list[int]:
        return [e.sequence for e in self.events]

    async def _run(self) -> None:
        while True:
            last = self.events[-1].sequence if self.events else self.after
            stream = self.replica.api.handles.WatchExpiring(
                E.WatchExpiringRequest(resume_after=last), timeout=600
            )
            try:
                async for event in stream:
                    if event.kind == E.EVENT_KIND_HEARTBEAT:
                        continue
                    self.events.append(event)
                    self.arrived.append(time.time())
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.CANCELLED:
                    return
            self.resumes += 1
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def stored_handle_events(cluster: Cluster, database: str, after: int) -> list[tuple[Any, ...]]:
    """(sequence, kind, subject id) of every handle event in the log after ``after``."""
    return cluster.query(
        database,
        "SELECT sequence, kind, subject_id FROM events WHERE subject = 'handle' "
        "AND sequence > %s ORDER BY sequence",
        (after,),
    )


def latest_sequence(cluster: Cluster, database: str) -> int:
    [(latest,)] = cluster.query(database, "SELECT COALESCE(MAX(sequence), 0) FROM events")
    return int(latest)


async def assert_every_watcher_saw_every_event(
    watchers: list[Watcher], cluster: Cluster, database: str, within: float = 15
) -> int:
    """Each watcher got exactly the stored handle events after its start, once each and
    in order. Returns how many events that is."""
    after = watchers[0].after
    expected = [row[0] for row in stored_handle_events(cluster, database, after)]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(w.sequences[-1:] == expected[-1:] for w in watchers):
            break
        await asyncio.sleep(0.1)
    for watcher in watchers:
        seen = watcher.sequences
        assert seen == sorted(seen), f"{watcher.replica.name} saw events out of order"
        # Events keep coming (handles rotate): compare up to the end of the log as read.
        got = [s for s in seen if not expected or s <= expected[-1]]
        doubled = [s for s, n in Counter(got).items() if n > 1]
        assert not doubled, f"{watcher.replica.name} saw events twice: {doubled[:10]}"
        missing = sorted(set(expected) - set(got))
        assert not missing, f"{watcher.replica.name} missed {len(missing)} events: {missing[:10]}"
        if got != expected:
            at = next(i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b)
            raise AssertionError(
                f"{watcher.replica.name} saw events out of order at {at}: "
                f"{got[max(0, at - 3) : at + 4]} where the log has "
                f"{expected[max(0, at - 3) : at + 4]} (resumed {watcher.resumes} times)"
            )
    return len(expected)
