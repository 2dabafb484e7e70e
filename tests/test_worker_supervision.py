"""`keyturn serve --workers N` when its processes are paused, signalled or killed from
outside: what the supervisor and the workers do then, as real processes on the wall clock.
(tests/test_workers.py holds what the workers do while all goes well.)"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from keyturn_server.process.supervisor import MAX_CRASHES, Supervisor, _Worker
from keyturn_server.settings import Settings
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
