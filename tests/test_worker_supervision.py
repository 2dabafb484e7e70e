"""`keyturn serve --workers N` when its processes are paused, signalled or killed from
outside: what the supervisor and the workers do then, as real processes on the wall clock.
(tests/test_workers.py holds what the workers do while all goes well.)"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import keys_pb2
from keyturn_server.process import supervisor as supervision
from keyturn_server.process.supervisor import MAX_CRASHES, Supervisor, _Worker
from keyturn_server.process.worker import PEERS
from keyturn_server.settings import Settings
from tests.harness import Client
from tests.process import ServerProcess
from tests.test_workers import answers, workers_of


@pytest.mark.parametrize("paused", ["the process tree", "the supervisor alone"])
async def test_a_pause_longer_than_the_worker_timeout_kills_no_worker(
    tmp_path: Path, paused: str
) -> None:
    """Ctrl-Z then fg, docker pause and unpause, a cgroup freeze: the supervisor resumed
    with what it heard before the pause and killed every worker for its silence (with more
    than MAX_CRASHES workers, the server then exited 1: "workers keep dying")."""
    server = ServerProcess(
        tmp_path / "data", "--workers", "2", "--http-listen", "off", "--worker-timeout", "3s"
    )
    await server.start()
    try:
        children = workers_of(server)
        stopped = [server.pid, *children] if paused == "the process tree" else [server.pid]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(5)
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(3)  # past the timeout again: they speak once a second
        said = server.log.read_text()
        assert "has not run for" not in said, said[-2000:]
        assert workers_of(server) == children
        await answers(server)
    finally:
        if server.process is not None:
            assert server.terminate() == 0


@dataclass
class _Hanging:
    """A worker's process that never speaks and ends when killed."""

    pid: int
    returncode: int | None = None

    def kill(self) -> None:
        self.returncode = -signal.SIGKILL


async def test_workers_killed_for_hanging_are_not_counted_as_crashes() -> None:
    """A host that starves every worker for --worker-timeout has the supervisor kill them
    all at once; that is no crash loop, and must not end the server."""
    supervisor = Supervisor(Settings(workers=MAX_CRASHES + 1), [])
    writers = []
    for index in range(MAX_CRASHES + 1):
        read, write = os.pipe()
        os.set_blocking(read, False)
        writers.append(write)  # open, and silent
        process = _Hanging(1000 + index)
        supervisor._workers.append(_Worker(index, process=process, pipe=read))  # type: ignore[arg-type]
    try:
        later = supervisor.settings.worker_timeout.total_seconds() + 1
        supervisor._kill_silent(later)
        assert [w.process.returncode for w in supervisor._workers if w.process] == [
            -signal.SIGKILL
        ] * (MAX_CRASHES + 1)
        assert all(supervisor._crashed(w, later) for w in supervisor._workers)
        assert all(w.restart_at is not None for w in supervisor._workers)
    finally:
        for write in writers:
            os.close(write)


async def test_a_worker_stuck_starting_is_killed_and_restarted_as_hung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, one that never said it serves was left running, unwatched and never
    replaced."""
    monkeypatch.setattr(supervision, "START_TIMEOUT", 0.3)
    supervisor = Supervisor(Settings(workers=2), [])
    stuck = await asyncio.create_subprocess_exec("sleep", "60")
    worker = _Worker(0, process=stuck)
    read, write = os.pipe()  # its "ready" never comes
    try:
        assert not await supervisor._ready(worker, read)
        assert await asyncio.wait_for(stuck.wait(), 5) == -signal.SIGKILL
        assert worker.hung
        assert supervisor._crashed(worker, 0.0) and worker.restart_at is not None
    finally:
        os.close(write)
        if stuck.returncode is None:
            stuck.kill()
            await stuck.wait()


async def children_of(server: ServerProcess, count: int, besides: set[int]) -> set[int]:
    """Until the supervisor has ``count`` children not in ``besides``: those."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while len(new := workers_of(server) - besides) < count:
        assert server.process is not None and server.process.poll() is None
        assert loop.time() < deadline, "no worker was started"
        await asyncio.sleep(0.02)
    return new


async def test_a_reload_while_the_workers_start_ends_neither_them_nor_the_server(
    tmp_path: Path,
) -> None:
    """SIGHUP's default action ends a process: the supervisor passed it on to workers that
    had not installed their handler yet, and the start failed ("workers did not start
    (worker 0: killed by signal 1 ...)")."""
    server = ServerProcess(tmp_path / "data", "--workers", "2", "--http-listen", "off")
    server.spawn()
    try:
        await children_of(server, 2, set())
        await asyncio.sleep(0.3)  # importing, opening the store
        os.kill(server.pid, signal.SIGHUP)
        await server.wait_listening(30)
        await answers(server)
        assert "killed by signal 1" not in server.log.read_text()
    finally:
        if server.process is not None:
            server.terminate()


async def test_a_sighup_reaching_a_worker_as_it_starts_does_not_end_it(tmp_path: Path) -> None:
    """A SIGHUP sent to every process of the server (a terminal's hangup, a reload sent to
    the process group) reaches a worker the supervisor is restarting, before its handler is
    installed."""
    server = ServerProcess(tmp_path / "data", "--workers", "2", "--http-listen", "off")
    server.env["LOG_LEVEL"] = "info"  # "worker N serves again"
    await server.start()
    try:
        before = workers_of(server)
        os.kill(min(before), signal.SIGKILL)
        (starting,) = await children_of(server, 1, before)
        await asyncio.sleep(0.3)
        os.kill(starting, signal.SIGHUP)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while "serves again" not in (said := server.log.read_text()):
            assert "killed by signal 1" not in said, said[-2000:]
            assert loop.time() < deadline, "the restarted worker never served"
            await asyncio.sleep(0.1)
        assert starting in workers_of(server)
    finally:
        if server.process is not None:
            server.terminate()


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def peers_directory(pid: int) -> Path:
    """The supervisor's private directory, as a worker was told it."""
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (entry,) = [e for e in environment if e.startswith(PEERS.encode() + b"=")]
    return Path(entry.split(b"=", 1)[1].decode())


@pytest.mark.parametrize("when", ["they serve", "they start"])
async def test_workers_of_a_killed_supervisor_stop_quietly_and_leave_nothing(
    tmp_path: Path, when: str
) -> None:
    """A SIGKILLed supervisor removes nothing: its workers stop by themselves, and used to
    leave its directory of sockets in /tmp, one per such crash; a worker still starting
    then died on a traceback (BrokenPipeError saying "ready")."""
    server = ServerProcess(tmp_path / "data", "--workers", "2", "--http-listen", "off")
    if when == "they serve":
        await server.start()
        children = workers_of(server)
    else:
        server.spawn()
        children = await children_of(server, 2, set())
        await asyncio.sleep(0.3)  # importing, opening the store
    directory = peers_directory(min(children))
    server.kill()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while any(alive(pid) for pid in children):
        assert loop.time() < deadline, "the workers outlived their supervisor"
        await asyncio.sleep(0.1)
    said = server.log.read_text()
    assert "Traceback" not in said, said[-3000:]
    assert not directory.exists(), list(directory.iterdir())


def children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def test_a_killed_workers_key_generation_processes_end_with_it(tmp_path: Path) -> None:
    """RSA keys are made in a pool of processes (domain/generation.py). A worker killed
    (by the supervisor for a hang, by the OOM killer) left them running for ever,
    adopted by pid 1: the pool process and multiprocessing's resource tracker."""
    server = ServerProcess(tmp_path / "data", "--workers", "2", "--http-listen", "off")
    await server.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        pools: dict[int, set[int]] = {}
        while not pools:  # a new connection each: the kernel spreads them
            assert loop.time() < deadline, "no worker made an RSA key in a pool"
            async with grpc.aio.insecure_channel(
                server.address, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                client = Client(channel, server.token())
                await client.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="signing"))
            pools = {w: kids for w in workers_of(server) if (kids := children(w))}
        worker, pool = pools.popitem()
        os.kill(worker, signal.SIGKILL)
        deadline = loop.time() + 10
        while any(alive(pid) for pid in pool):
            assert loop.time() < deadline, f"still running: {[p for p in pool if alive(p)]}"
            await asyncio.sleep(0.1)
    finally:
        if server.process is not None:
            server.terminate()
