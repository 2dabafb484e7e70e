"""One server per data directory: an exclusive lock on ``DATA_DIR/keyturn.lock``.

Two servers on one SQLite file would both run the scheduler and each miss the other's
events, so the second refuses to start, naming the first. The lock is ``flock`` on a file
that holds the holder's pid: the kernel drops it when the last process holding it ends,
however it ends, so a crash never leaves a stale lock behind. The directory itself is
locked the same way: a lock file can be deleted under a running server (someone
"clearing a stale lock", a cleanup job), and before, the next server then locked a new
file and started beside it, and ``backup restore --force`` replaced its store under it.
``--workers`` passes both open files to every serving process, so the directory stays
locked while any of them lives. Operator commands (``keyturn token ...``) do not take
it: they work beside a running server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "keyturn.lock"


class DataDirInUse(Exception):
    """Another server holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None
        self._dir_fd: int | None = None

    @property
    def fds(self) -> tuple[int, ...]:
        """The open lock file (and directory), for processes that must keep them locked."""
        assert self._fd is not None, "not locked"
        return (self._fd,) if self._dir_fd is None else (self._fd, self._dir_fd)

    def acquire(self) -> None:
        """Take the lock or raise DataDirInUse naming the holder's pid."""
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        dir_fd: int | None = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            dir_fd = _lock_directory(directory)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process: its lock file was deleted"
            raise DataDirInUse(
                f"the data directory {directory} is in use by another Keyturn server "
                f"({who}); stop it first, or give this one another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self._dir_fd = fd, dir_fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def _lock_directory(directory: Path) -> int | None:
    """The directory, open and locked; None where its filesystem cannot lock directories
    (NFS, some FUSE mounts): the lock file alone guards it there, as before. Raises
    BlockingIOError when another server holds it."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(dir_fd)
        raise
    except OSError:
        os.close(dir_fd)
        return None
    return dir_fd


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    return None
