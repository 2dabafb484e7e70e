"""The embedded store's files, watched: removed or replaced under the running server.

A server keeps its database file and its WAL open. When they are deleted (a clean-up
script, ``rm -rf`` of the wrong directory) or replaced (a file moved over them), SQLite
goes on reading and writing the open files, which no longer have a name: every call
succeeds, and at the next restart all of it is gone, keys included, with every ciphertext
made under them. So the store compares the files' identities (device and inode) with
those it opened, before each batch of writes and at each health check. Once they differ
it refuses every write (UNAVAILABLE, STORE_FILE_GONE: nothing kept that a restart would
lose), says NOT_SERVING, and saves a copy of the database as it still sees it next to
where the file was, for ``keyturn backup restore``. Single reads go on from the open
files; reports (lists, statistics), which open the file by its name, are refused too.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

#: The embedded store's database file, in the data directory.
DB_FILE = "keyturn.db"

#: What callers are told (the operators' message names paths on the server).
REFUSAL = (
    "the store's database file was removed or replaced under the server; writes are "
    "refused until an operator restores it"
)

Identity = tuple[int, int]


def identity(path: Path) -> Identity | None:
    """(device, inode) of ``path``, or None when nothing has that name."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


class FileWatch:
    """The identities of a database file and its WAL as first seen, and what became of
    them. The WAL may appear after the database is opened: it is watched from then on."""

    def __init__(self, database: Path) -> None:
        self._known: dict[Path, Identity | None] = {
            database: identity(database),
            database.with_name(database.name + "-wal"): None,
        }
        #: Why the files cannot be trusted any more (for operators: it names them); empty
        #: while they can. Never cleared: only a restart opens what now has the name.
        self.problem = ""
        self.check()

    def check(self) -> str:
        """The problem (also kept in ``problem``), if a watched file was removed or
        replaced since it was first seen: a stat of each, about 5 µs."""
        if self.problem:
            return self.problem
        for path, known in self._known.items():
            now = identity(path)
            if known is None:
                self._known[path] = now
                continue
            if now != known:
                what = "removed" if now is None else "replaced by another file"
                self.problem = (
                    f"{path} was {what} under the running server: writes are refused "
                    "(a restart would lose them); stop the server and restore the copy "
                    "it saved (keyturn backup restore), or a backup"
                )
                return self.problem
        return ""


def save_copy(source: sqlite3.Connection, database: Path) -> Path:
    """Copy what ``source`` (a connection to the lost file) sees to a new private file next
    to where ``database`` was, and return its path. Runs in a worker thread: a large
    database takes seconds. Each worker of ``--workers`` saves its own (its pid names it)."""
    directory = database.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = directory / f"{database.stem}-recovered-{stamp}-{os.getpid()}.db"
    descriptor = os.open(target, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(descriptor)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy, pages=1024)
    finally:
        copy.close()
    return target
