"""`keyturn serve --workers N`: several serving processes on one port and one SQLite file,
as real processes on the wall clock.

Connections are spread over the workers by the kernel (SO_REUSEPORT hashes each
connection), so every test opens many channels: with 16 of them the chance that all land
on one of two workers is 2^-15."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyturn.v1 import admin_pb2, events_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.process.leader import LOCK_FILE
from keyturn_server.process.worker import AUTO_CAP, available_cores, parse_workers
from keyturn_server.settings import Settings
from tests.harness import Client, fails
from tests.process import ServerProcess, free_port

E = events_pb2
K = keys_pb2
R = handles_pb2
CHANNELS = 16


def workers_of(server: ServerProcess) -> set[int]:
    """Pids of the supervisor's children."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return {int(pid) for pid in children}


def exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def scheduler_pid(server: ServerProcess) -> int | None:
    text = (server.data_dir / LOCK_FILE).read_text().strip()
    return int(text) if text else None


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", "--workers", "2", "--http-listen", "off")
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.terminate()


@pytest.fixture
async def clients(workers: ServerProcess) -> AsyncIterator[list[Client]]:
    # A connection of its own each (channels to one target share connections otherwise).
    channels = [
        grpc.aio.insecure_channel(workers.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    try:
        yield [Client(channel, workers.token()) for channel in channels]
    finally:
        for channel in channels:
            await channel.close()


async def add_type(client: Client, name: str, **settings: object) -> None:
    fields: dict[str, object] = {
        "algorithm": "sha256",
        "handle_length": 32,
        "rotation_interval": {"seconds": 3600},
        "warning_threshold": {"seconds": 60},
        "max_lifetime": {"seconds": 7200},
        "max_usage": 1000,
        **settings,
    }
    await client.admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(handle_types={name: admin_pb2.HandleTypeConfig(**fields)}),
            update_mask={"paths": [f"handle_types.{name}"]},
        )
    )


async def test_max_usage_is_exact_with_every_worker_validating_one_handle(
    workers: ServerProcess, clients: list[Client]
) -> None:
    limit, attempts = 300, 900
    await add_type(clients[0], "tally", max_usage=limit)
    config = await clients[0].admin.GetConfig(admin_pb2.GetConfigRequest())
    await clients[0].admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(
                security_policies=admin_pb2.SecurityPolicies(rate_limit_per_handle=100_000)
            ),
            update_mask={"paths": ["security_policies.rate_limit_per_handle"]},
            etag=config.etag,
        )
    )
    # Every worker must know the type: a configuration change wakes the others at once.
    issued = await clients[0].handles.GenerateHandle(R.GenerateHandleRequest(type="tally"))

    async def hammer(client: Client, count: int) -> list[bool]:
        valid = []
        for _ in range(count):
            reply = await client.handles.ValidateHandle(R.ValidateHandleRequest(token=issued.token))
            valid.append(reply.validation.valid)
        return valid

    per_channel = attempts // CHANNELS
    results = await asyncio.gather(*(hammer(c, per_channel) for c in clients for _ in range(2)))
    answers = [v for r in results for v in r]
    assert len(answers) == 2 * per_channel * CHANNELS
    assert answers.count(True) == limit  # not one more, not one less
    handle = await clients[1].handles.GetHandle(R.GetHandleRequest(handle_id=issued.handle.id))
    assert handle.usage_count == limit
    assert handle.status == resources_pb2.HANDLE_STATUS_EXHAUSTED


async def answers(server: ServerProcess) -> None:
    """A new connection to ``server`` gets an answer (GetHealth, as its admin)."""
    channel = grpc.aio.insecure_channel(server.address)
    try:
        client = Client(channel, server.token())
        await client.admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=10)
    finally:
        await channel.close()


async def by_worker(clients: list[Client]) -> list[list[Client]]:
    """The clients grouped by the worker their connection landed on."""
    groups: dict[str, list[Client]] = {}
    for client in clients:
        health = await client.admin.GetHealth(admin_pb2.GetHealthRequest(component="scheduler"))
        (scheduler,) = [c.scheduler for c in health.health.components if c.name == "scheduler"]
        groups.setdefault(scheduler.replica, []).append(client)
    return list(groups.values())


async def test_a_key_changed_through_one_worker_is_seen_by_the_next_call_on_the_other(
    workers: ServerProcess, clients: list[Client]
) -> None:
    first, second = (group[0] for group in await by_worker(clients))
    key = (await first.keys.GenerateKey(K.GenerateKeyRequest(type="encryption"))).key
    sealed = await first.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x"))
    for client in (first, second, first, second):  # both hold it now (and its nonce block)
        await client.keys.Decrypt(K.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext))
        await client.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x"))
    for one, other in ((first, second), (second, first), (first, second)):
        await one.keys.RemoveKey(K.RemoveKeyRequest(key_id=key.id, reason="leaked"))
        refused = await fails(other.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"y")))
        assert refused.reason == "KEY_REMOVED"
        await other.keys.RestoreKey(K.RestoreKeyRequest(key_id=key.id))
        await one.keys.Decrypt(K.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext))
    await second.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    rotated = await first.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"z"))
    assert rotated.key_version == 2
    got = await first.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert got.primary_version == 2


async def test_a_version_disabled_through_one_worker_is_refused_at_once_by_the_other(
    workers: ServerProcess, clients: list[Client]
) -> None:
    """Both workers hold version 1's material loaded; a disable through either holds on
    the very next call of the other, and so does the enable that undoes it."""
    first, second = (group[0] for group in await by_worker(clients))
    key = (await first.keys.GenerateKey(K.GenerateKeyRequest(type="encryption"))).key
    sealed = await first.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x"))
    await second.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    decrypt = K.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
    for one, other in ((first, second), (second, first)):
        await one.keys.Decrypt(decrypt)
        await other.keys.Decrypt(decrypt)
        await one.keys.DisableKeyVersion(
            K.DisableKeyVersionRequest(key_id=key.id, version=1, reason="leaked")
        )
        refused = await fails(other.keys.Decrypt(decrypt))
        assert refused.reason == "VERSION_DISABLED"
        assert (await fails(one.keys.Decrypt(decrypt))).reason == "VERSION_DISABLED"
        await other.keys.EnableKeyVersion(K.EnableKeyVersionRequest(key_id=key.id, version=1))
        assert (await one.keys.Decrypt(decrypt)).plaintext == b"x"


async def test_the_keys_per_owner_cap_holds_with_every_worker_generating(
    workers: ServerProcess, clients: list[Client]
) -> None:
    cap = 12
    config = await clients[0].admin.GetConfig(admin_pb2.GetConfigRequest())
    await clients[0].admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(
                security_policies=admin_pb2.SecurityPolicies(max_keys_per_owner=cap)
            ),
            update_mask={"paths": ["security_policies.max_keys_per_owner"]},
            etag=config.etag,
        )
    )
    for client in clients:  # every worker has the new cap (a wake-up away)
        for _ in range(100):
            seen = await client.admin.GetConfig(admin_pb2.GetConfigRequest())
            if seen.security_policies.max_keys_per_owner == cap:
                break
            await asyncio.sleep(0.02)
    calls = [c.keys.GenerateKey(K.GenerateKeyRequest(type="session")) for c in clients * 3]
    results = await asyncio.gather(*calls, return_exceptions=True)
    made = [r for r in results if isinstance(r, keys_pb2.GenerateKeyResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(made) == cap  # not one more, not one less
    assert len(refused) == len(calls) - cap
    assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_watchers_on_every_worker_see_every_event_once_in_order(
    workers: ServerProcess, clients: list[Client]
) -> None:
    await add_type(clients[0], "watched")
    streams = [
        c.handles.WatchExpiring(E.WatchExpiringRequest(types=["watched"]), timeout=60)
        for c in clients
    ]
    for stream in streams:
        assert (await stream.read()).kind == E.EVENT_KIND_SNAPSHOT_COMPLETE
    made = []
    for i in range(10):  # from every channel in turn: both workers commit events
        issued = await clients[i % CHANNELS].handles.GenerateHandle(
            R.GenerateHandleRequest(type="watched")
        )
        await clients[(i + 7) % CHANNELS].handles.RemoveHandle(
            R.RemoveHandleRequest(handle_id=issued.handle.id)
        )
        made.append(issued.handle.id)
    expected = [(h, k) for h in made for k in ("CREATED", "REVOKED")]

    async def collect(stream: object) -> list[tuple[str, str, int]]:
        seen: list[tuple[str, str, int]] = []
        while len(seen) < len(expected):
            event = await asyncio.wait_for(stream.read(), 20)  # type: ignore[attr-defined]
            if event.kind == E.EVENT_KIND_HEARTBEAT:
                continue
            kind = E.EventKind.Name(event.kind).removeprefix("EVENT_KIND_")
            seen.append((event.handle.id, kind, event.sequence))
        return seen

    received = await asyncio.gather(*(collect(s) for s in streams))
    for stream in streams:
        stream.cancel()
    for seen in received:
        assert [(h, k) for h, k, _ in seen] == expected
        sequences = [s for _, _, s in seen]
        assert sequences == sorted(set(sequences))


async def test_exactly_one_worker_schedules_each_rotation_and_expiry(
    workers: ServerProcess, clients: list[Client]
) -> None:
    await add_type(
        clients[0],
        "blink",
        rotation_interval={"seconds": 2},
        warning_threshold={"seconds": 1},
        max_lifetime={"seconds": 5},
    )
    stream = clients[3].handles.WatchExpiring(E.WatchExpiringRequest(types=["blink"]), timeout=30)
    assert (await stream.read()).kind == E.EVENT_KIND_SNAPSHOT_COMPLETE
    await clients[5].handles.GenerateHandle(R.GenerateHandleRequest(type="blink"))
    kinds: list[str] = []
    while not kinds or kinds[-1] != "EXPIRED":
        event = await asyncio.wait_for(stream.read(), 10)
        if event.kind != E.EVENT_KIND_HEARTBEAT:
            kinds.append(E.EventKind.Name(event.kind).removeprefix("EVENT_KIND_"))
    stream.cancel()
    assert kinds == [
        "CREATED",
        "EXPIRING",
        "ROTATED",
        "EXPIRING",
        "ROTATED",
        "EXPIRING",
        "EXPIRED",
    ]
    assert scheduler_pid(workers) in workers_of(workers)


async def test_a_killed_worker_is_replaced_and_another_takes_the_scheduler(
    workers: ServerProcess, clients: list[Client]
) -> None:
    before = workers_of(workers)
    assert len(before) == 2
    leader = scheduler_pid(workers)
    assert leader in before
    os.kill(leader, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not (len(workers_of(workers)) == 2 and leader not in workers_of(workers)):
        assert loop.time() < deadline, "the killed worker was not restarted"
        await asyncio.sleep(0.1)
    # The survivor took the scheduler at once (its lock was released by the kernel).
    assert scheduler_pid(workers) in before - {leader}
    for client in clients:  # and every connection is served again
        await client.admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=10)


async def test_a_hung_worker_is_killed_replaced_and_loses_the_scheduler(
    tmp_path: Path,
) -> None:
    """A worker that is alive but not running (SIGSTOP here; a stuck event loop, a paused
    container) would keep its share of connections and the scheduler's lock for ever."""
    server = ServerProcess(
        tmp_path / "data", "--workers", "2", "--http-listen", "off", "--worker-timeout", "3s"
    )
    await server.start()
    try:
        before = workers_of(server)
        hung = scheduler_pid(server)
        assert hung in before
        os.kill(hung, signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        deadline = stopped_at + 20
        while not (len(workers_of(server)) == 2 and hung not in workers_of(server)):
            assert loop.time() < deadline, "the hung worker was never replaced"
            await asyncio.sleep(0.1)
        replaced_after = loop.time() - stopped_at
        assert 3 <= replaced_after < 8  # not before its timeout, and soon after it
        assert not exists(hung)
        while scheduler_pid(server) not in workers_of(server):
            assert loop.time() < deadline, "nobody took the scheduler over"
            await asyncio.sleep(0.1)
        assert "has not run for" in server.log.read_text()
        await answers(server)
    finally:
        if server.process is not None:
            server.terminate()


async def test_sigterm_stops_every_worker_and_exits_zero(workers: ServerProcess) -> None:
    children = workers_of(workers)
    assert workers.terminate() == 0
    assert not [pid for pid in children if exists(pid)]  # ended and reaped by the supervisor


async def test_sighup_is_passed_to_every_worker_and_ends_none(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--workers", "2", "--http-listen", "off")
    server.env["LOG_LEVEL"] = "info"  # each worker says it reloaded
    await server.start()
    try:
        children = workers_of(server)
        os.kill(server.pid, signal.SIGHUP)
        await asyncio.sleep(1)
        assert server.process is not None and server.process.poll() is None
        assert workers_of(server) == children  # none ended, none replaced
        await answers(server)
        said = server.log.read_text()
        reloaded = {line for line in said.splitlines() if '"SIGHUP: reloaded' in line}
        assert len(reloaded) == len(children), said[-3000:]
    finally:
        if server.process is not None:
            server.terminate()


@pytest.mark.slow
async def test_a_worker_that_does_not_stop_is_killed_and_the_log_says_so(
    workers: ServerProcess,
) -> None:
    # A worker that hangs in its shutdown (as one did when its scheduler slept through
    # the cancel: tests/test_stop.py) is killed after the grace period plus 10 s, and the
    # usage counts it had not flushed go with it: on-call must be able to see that.
    stuck = min(workers_of(workers))
    os.kill(stuck, signal.SIGSTOP)
    assert workers.terminate(timeout=60) == 0
    assert not exists(stuck)
    said = workers.log.read_text()
    assert "did not stop" in said and f"pid {stuck}" in said, said[-2000:]


@pytest.mark.slow
async def test_workers_that_keep_dying_end_the_supervisor_with_an_error(
    workers: ServerProcess,
) -> None:
    assert workers.process is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while workers.process.poll() is None:
        assert loop.time() < deadline, "the supervisor kept restarting dying workers"
        for pid in workers_of(workers):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
    assert workers.process.returncode == 1
    assert "workers keep dying" in workers.log.read_text()
    workers.process = None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("4", 4), ("64", 64), ("auto", min(available_cores(), AUTO_CAP))],
)
def test_workers_flag(text: str, expected: int) -> None:
    assert parse_workers(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "65", "many", ""])
def test_workers_flag_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="--workers"):
        parse_workers(text)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The supervisor's /metrics, by sample name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


GENERATED = (
    "keyturn_rpc_requests_total",
    (("code", "OK"), ("method", "/keyturn.v1.KeyService/GenerateKey")),
)


async def generate_keys(server: ServerProcess) -> None:
    """One GenerateKey on each of CHANNELS connections: both workers serve some."""
    channels = [
        grpc.aio.insecure_channel(server.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    try:
        for channel in channels:
            await Client(channel, server.token()).keys.GenerateKey(
                K.GenerateKeyRequest(type="api"), timeout=10
            )
    finally:
        for channel in channels:
            await channel.close()


async def test_metrics_of_every_worker_are_served_merged_by_the_supervisor(
    tmp_path: Path,
) -> None:
    """Each worker counts the calls it served: the supervisor's scrape sums them (the
    highest would be short of the total), serves the store's figures once, and a worker
    that is replaced does not take its counts with it."""
    port = free_port()
    server = ServerProcess(
        tmp_path / "data",
        "--workers",
        "2",
        "--http-listen",
        "off",
        "--metrics-listen",
        f"127.0.0.1:{port}",
    )
    await server.start()
    try:
        await generate_keys(server)
        figures = await asyncio.to_thread(scrape, port)
        assert figures[GENERATED] == CHANNELS
        assert figures[("keyturn_metrics_workers", ())] == 2
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while figures.get(("keyturn_scheduler_leader", ())) != 1:  # refreshed every 5 s
            assert loop.time() < deadline, figures
            await asyncio.sleep(0.5)
            figures = await asyncio.to_thread(scrape, port)

        replaced = sorted(workers_of(server))[0]
        os.kill(replaced, signal.SIGKILL)
        while not (len(workers_of(server)) == 2 and replaced not in workers_of(server)):
            assert loop.time() < deadline + 20, "the killed worker was not restarted"
            await asyncio.sleep(0.1)
        figures = await asyncio.to_thread(scrape, port)
        while figures[("keyturn_metrics_workers", ())] != 2:  # until its successor answers
            assert loop.time() < deadline + 40, figures
            await asyncio.sleep(0.2)
            figures = await asyncio.to_thread(scrape, port)
        assert figures[GENERATED] == CHANNELS  # the killed worker's count kept
        await generate_keys(server)
        figures = await asyncio.to_thread(scrape, port)
        assert figures[GENERATED] == 2 * CHANNELS
    finally:
        if server.process is not None:
            server.terminate()


def test_a_taken_metrics_port_stops_the_supervisor_before_any_worker(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        server = ServerProcess(
            tmp_path / "data", "--workers", "2", "--http-listen", "off", "--metrics-listen", address
        )
        server.spawn()
        assert server.process is not None
        assert server.process.wait(timeout=30) == 1
    said = server.log.read_text()
    assert f"cannot listen on {address}" in said and "--metrics-listen" in said, said[-2000:]
    assert not (tmp_path / "data" / "keyturn.db").exists()


async def test_statistics_count_every_workers_calls_whichever_answers(
    workers: ServerProcess, clients: list[Client]
) -> None:
    """Each worker counts the calls it served; a statistics call used to answer with the
    counts of whichever worker the caller's connection landed on (about half of them)."""
    for client in clients:
        await client.keys.GenerateKey(K.GenerateKeyRequest(type="api"), timeout=10)
    for client in clients:  # every connection, so both workers answer
        answer = await client.keys.GetKeyStatistics(K.GetKeyStatisticsRequest(), timeout=10)
        assert answer.statistics.generate_latency.count == CHANNELS
        assert answer.statistics.total == CHANNELS  # from the store, as before


async def test_health_counts_every_workers_integrity_failures_whichever_answers(
    workers: ServerProcess, clients: list[Client]
) -> None:
    """A forged row read through some workers: GetHealth said so, or not, by which worker
    the on-call's connection landed on."""
    made = await clients[0].keys.GenerateKey(K.GenerateKeyRequest(type="api"), timeout=10)
    with sqlite3.connect(workers.data_dir / "keyturn.db") as db:
        db.execute("UPDATE keys SET owner = 'mallory' WHERE id = ?", (made.key.id,))
    for client in clients:  # every connection, so both workers read it
        failed = await fails(client.keys.GetKey(K.GetKeyRequest(key_id=made.key.id), timeout=10))
        assert failed.code == grpc.StatusCode.DATA_LOSS
    seen = set()
    for client in clients:
        report = await client.admin.GetHealth(admin_pb2.GetHealthRequest(component="keys"))
        [keys] = report.health.components
        seen.add((keys.keys.integrity_failures, tuple(keys.reasons)))
    [(failures, reasons)] = seen
    assert failures >= CHANNELS and "failed authentication" in reasons[0]


def test_metrics_listen_is_accepted_with_several_workers() -> None:
    assert Settings(workers=2, metrics_listen="127.0.0.1:9090").check().workers == 2


async def test_an_access_token_revoked_through_one_worker_is_refused_by_the_next_call_on_the_other(
    workers: ServerProcess, clients: list[Client]
) -> None:
    created = await clients[0].admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(name="thief", role=resources_pb2.ROLE_SERVICE)
    )
    groups = await by_worker(clients)
    thieves = [Client(admin.channel, created.token) for admin in clients]
    for thief in thieves:  # every worker has just checked the token, and holds its verdict
        await thief.keys.ListKeys(K.ListKeysRequest())
    await groups[0][0].admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="thief"))
    for thief in thieves:  # at once, on both workers: not once a cached verdict ages out
        refused = await fails(thief.keys.ListKeys(K.ListKeysRequest()))
        assert refused.code == grpc.StatusCode.UNAUTHENTICATED
