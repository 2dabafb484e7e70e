"""The embedded store on disk, as `keyturn backup` handles it: the database file and the
files SQLite keeps beside it (``-wal``, ``-shm``, ``-journal``), which belong to that one
file and are applied to whatever next has its name.

That is why a restore moves all of them aside, and not only the database: a ``-wal`` left
by a server whose database was deleted (or by a crash followed by ``rm keyturn.db``) would
be replayed into the restored copy on its first open, and the server would refuse the
damaged result. It is also why a copy may not be written into the data directory: there
it could replace the live file, or sit beside it where a server's clean-up would not
expect it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

#: What SQLite keeps beside a database, named after it.
COMPANIONS = ("-wal", "-shm", "-journal")


class PlaceError(Exception):
    """A path a command must not write to (the one line to print)."""


def store_files(database: Path) -> list[Path]:
    """The database file and its companions, present or not."""
    return [database, *(database.with_name(database.name + s) for s in COMPANIONS)]


def refuse_inside(database: Path, target: Path) -> None:
    """Refuse ``target`` as a backup's destination when it is the live store (by name,
    link or symbolic link) or anywhere in its data directory."""
    data_dir = database.parent
    where = data_dir.resolve()
    resolved = target.resolve()
    live = [p for p in store_files(database) if p.exists()]
    if resolved in {p.resolve() for p in live} or any(_same(target, p) for p in live):
        raise PlaceError(
            f"{target} is the live store of {data_dir}; write the copy outside the data directory"
        )
    if resolved.is_relative_to(where):
        raise PlaceError(
            f"{target} is inside the data directory {data_dir}; write the copy outside it"
        )


def move_aside(database: Path) -> list[Path]:
    """Move the database and its companions, those present, to names no earlier set holds
    (``keyturn.db.replaced-<time>[.N]`` and its suffixes); the new names, in order. The
    caller holds the data directory's lock, so nothing else takes a name between the check
    and the rename."""
    present = [p for p in store_files(database) if p.exists()]
    if not present:
        return []
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = database.with_name(f"{database.name}.replaced-{stamp}")
    attempt = 0
    while any(p.exists() for p in store_files(base)):
        attempt += 1
        base = database.with_name(f"{database.name}.replaced-{stamp}.{attempt}")
    moved = []
    for path in present:
        aside = base.with_name(base.name + path.name[len(database.name) :])
        os.replace(path, aside)
        moved.append(aside)
    return moved


@contextlib.contextmanager
def private_file(directory: Path, prefix: str) -> Iterator[Path]:
    """A 0600 file in ``directory`` (renamed into place by the caller), removed on failure
    with any companions SQLite made for it."""
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=directory)
    except OSError as exc:  # named after the directory, not the random name never made
        raise OSError(exc.errno, exc.strerror, str(directory)) from None
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        for leftover in store_files(path):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _same(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:  # either is gone: not the same file
        return False
