"""One server per data directory and per port: a second `keyturn serve` on either exits
at once with one clear line, never a traceback, and never starts serving beside the
first (which, before, took half the connections and ran a second scheduler)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from keyturn_server.process import lock as lock_module
from keyturn_server.process.lock import DataDirInUse, DataDirLock
from tests.harness import MASTER_KEY
from tests.process import ServerProcess, free_port


def serve(data_dir: Path, address: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """A second server, run to completion (it must not start)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "keyturn_server",
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            address,
            "--http-listen",
            "off",
            *extra,
        ],
        env={**os.environ, "MASTER_KEY": MASTER_KEY, "LOG_LEVEL": "info"},
        capture_output=True,
        text=True,
        timeout=float(os.environ.get("KEYTURN_TEST_SECOND_SERVER_TIMEOUT", "60")),
        check=False,
    )


def _workers(count: str) -> tuple[str, ...]:
    return ("--workers", count) if count != "1" else ()


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit code 1, nothing on stdout, one line on stderr."""
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "workers"])
async def test_a_second_server_on_the_same_data_dir_names_the_first(
    tmp_path: Path, workers: str
) -> None:
    first = ServerProcess(tmp_path / "data", *_workers(workers), "--http-listen", "off")
    await first.start()
    try:
        line = one_line(serve(first.data_dir, f"127.0.0.1:{free_port()}"))
        assert f"data directory {first.data_dir} is in use" in line
        assert f"(pid {first.pid})" in line
    finally:
        first.terminate()


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "workers"])
@pytest.mark.parametrize("second", ["1", "2"], ids=["then-one-process", "then-workers"])
async def test_a_second_server_on_the_same_port_refuses_in_one_line(
    tmp_path: Path, workers: str, second: str
) -> None:
    first = ServerProcess(tmp_path / "one", *_workers(workers), "--http-listen", "off")
    await first.start()
    try:
        result = serve(tmp_path / "two", first.address, *_workers(second))
        line = one_line(result)
        assert f"cannot listen on {first.address}" in line
        assert "already in use" in line
        # Refused before it made anything: no database, no token, no master key.
        assert not (tmp_path / "two" / "keyturn.db").exists()
    finally:
        first.terminate()


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "workers"])
async def test_deleting_the_lock_file_does_not_let_a_second_server_in(
    tmp_path: Path, workers: str
) -> None:
    """Someone "clears a stale lock" under a running server: before, the next server
    locked a new file and started beside it on the same database."""
    first = ServerProcess(tmp_path / "data", *_workers(workers), "--http-listen", "off")
    await first.start()
    try:
        (first.data_dir / "keyturn.lock").unlink()
        line = one_line(serve(first.data_dir, f"127.0.0.1:{free_port()}"))
        assert f"data directory {first.data_dir} is in use" in line
        assert "its lock file was deleted" in line
    finally:
        assert first.terminate() == 0
    again = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await again.start()
    assert again.terminate() == 0


def test_where_directories_cannot_be_locked_the_lock_file_still_guards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS and some FUSE mounts refuse flock on a directory: the server still starts."""
    real = fcntl.flock

    def no_directory_locks(fd: int, operation: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "no locks on directories here")
        real(fd, operation)

    monkeypatch.setattr(lock_module.fcntl, "flock", no_directory_locks)
    first = DataDirLock(tmp_path)
    first.acquire()
    try:
        assert len(first.fds) == 1
        with pytest.raises(DataDirInUse):
            DataDirLock(tmp_path).acquire()
    finally:
        first.release()


async def test_a_killed_server_leaves_no_stale_lock(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await first.start()
    first.kill()  # SIGKILL: no cleanup at all
    again = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await again.start()
    assert again.terminate() == 0


async def test_workers_keep_the_data_dir_while_their_supervisor_is_gone(tmp_path: Path) -> None:
    """SIGKILL of the supervisor: its workers stop by themselves, and until the last one
    is gone the data directory stays locked (no second tree can start beside them)."""
    first = ServerProcess(tmp_path / "data", "--workers", "2", "--http-listen", "off")
    await first.start()
    children = _children(first.pid)
    os.kill(first.pid, signal.SIGKILL)
    assert first.process is not None
    first.process.wait()
    first.process = None
    alive_before = [pid for pid in children if _running(pid)]
    lock = DataDirLock(first.data_dir)
    try:
        lock.acquire()
    except DataDirInUse:
        pass
    else:
        lock.release()
        # Only possible once every worker had gone.
        assert not [pid for pid in alive_before if _running(pid)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while any(_running(pid) for pid in children):
        assert loop.time() < deadline, "orphaned workers did not stop"
        await asyncio.sleep(0.1)
    again = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await again.start(within=60)
    assert again.terminate() == 0


def _running(pid: str) -> bool:
    """Alive and not a zombie (reaped by init once its parent is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
