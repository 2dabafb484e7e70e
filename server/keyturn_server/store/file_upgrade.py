"""Upgrading the embedded store's schema, with the way back kept.

A newer Keyturn migrates ``keyturn.db`` in place at its first start, and the older one
then refuses the file, whose schema it does not know: rolling back a bad release needed
a backup the operator had thought of taking before, and the refusal said only that the
schema was newer. Now, before the first step of an upgrade, the file as it stands is
copied beside it as ``keyturn.db.schema-N`` (N: its schema before the upgrade; one
consistent snapshot through SQLite's backup API, 0600, synced), and a server that
refuses a newer file says what to do: run the newer version, or put back the copy of
its own schema with the command that does so. Writes made since the upgrade are not in
the copy, and it stays until an operator deletes it (it is as secret as the database:
sealed under the master key). A fresh file (schema 0) needs no copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

from keyturn_server.store.schema import going_back, migrations, not_upgraded
from keyturn_server.store.sqlite_connections import StoreOpenError

log = logging.getLogger("keyturn.store")


class UpgradeError(StoreOpenError):
    """The file's schema cannot be brought to this server's (one line to show)."""


def copy_before(path: Path, schema: int) -> Path:
    """Where the file as it was at ``schema`` is kept when a newer Keyturn upgrades it."""
    return path.with_name(f"{path.name}.schema-{schema}")


def migrate(conn: sqlite3.Connection, path: Path, *, upgrade: bool = True) -> int:
    """Bring the file at ``path`` (open as ``conn``) to this server's schema; that schema.
    ``upgrade=False`` (operator commands): an older file is refused, not upgraded."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    steps = migrations("sqlite")
    latest = int(steps[-1][0])
    if current > latest:
        raise UpgradeError(newer_file(path, current, latest), newer=current)
    if not upgrade and 0 < current < latest:
        raise UpgradeError(
            f"{path} has schema version {current}, older than this keyturn command's "
            f"({latest}): " + not_upgraded("the server on it"),
            older=current,
        )
    if 0 < current < latest:
        kept = keep_copy(conn, path, current)
        log.warning(
            f"upgrading the database schema from {current} to {latest}; the file as it was "
            f"is kept in {kept}, to go back to the Keyturn before",
            extra={"category": "app", "schema": latest, "kept": str(kept)},
        )
    for version, sql in steps:
        if version > current:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {version};\nCOMMIT;"
            )
    return latest


def newer_file(path: Path, schema: int, mine: int) -> str:
    """Why a file a newer Keyturn upgraded is refused, and the ways on."""
    kept = copy_before(path, mine)
    data_dir = path.parent
    if kept.exists():
        back = (
            f"restore the copy the upgrade kept: keyturn backup restore {kept} "
            f"--data-dir {data_dir} --force"
        )
    else:
        back = (
            "restore a backup taken before the upgrade: keyturn backup restore <backup> "
            f"--data-dir {data_dir} --force"
        )
    return f"{path} has schema version {schema}, newer than this server ({mine}): " + going_back(
        back
    )


def keep_copy(conn: sqlite3.Connection, path: Path, schema: int) -> Path:
    """Copy the file as it stands (with what its WAL holds) to :func:`copy_before`."""
    kept = copy_before(path, schema)
    partial = kept.with_name(kept.name + ".partial")
    try:
        fd = os.open(partial, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        os.close(fd)
        with contextlib.closing(sqlite3.connect(partial)) as copy:
            conn.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, kept)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except (OSError, sqlite3.Error) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise UpgradeError(
            f"cannot keep a copy of {path} (schema {schema}) before upgrading it ({exc}): "
            f"it needs room for one more copy of the database ({_size(path)}) in "
            f"{path.parent}; nothing was changed"
        ) from None
    return kept


def _size(path: Path) -> str:
    try:
        return f"{os.stat(path).st_size / 1e6:.1f} MB"
    except OSError:
        return "its size"
