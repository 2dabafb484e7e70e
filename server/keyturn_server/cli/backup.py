"""`keyturn backup create FILE` and `keyturn backup restore FILE`: a consistent copy of the
embedded store taken while the server runs, and putting one back.

A key service's worst day is the disk under it: every key lost is every ciphertext under
it lost. The copy is made with SQLite's online backup API from a reader of its own, so it
is one consistent snapshot (WAL readers do not block the server's writes), then checked
(`PRAGMA integrity_check`) and, with MASTER_KEY set, opened as the server would open it:
the keyring unwraps and the audit chain verifies. Only then does it replace FILE.

What the copy holds: key material sealed under the master key, handle secrets and access
tokens as keyed digests, configuration, the event and audit logs. Nothing in it is readable
without MASTER_KEY, but with it everything is: keep the two apart, and the copy as private
as the data directory (it is written 0600).

Access tokens are in the copy, so the tokens that worked work again after a restore (the
`admin.token` file beside the store is not copied: keep the token, or make one with
`keyturn token create`). Restoring needs the MASTER_KEY the copy was made under, is
refused while a server holds the data directory, and never deletes data: what the
directory held is moved aside, the database's -wal, -shm and -journal with it (see
:mod:`keyturn_server.cli.store_files`), and the restored file is opened in place as the
server will open it before the restore says it succeeded.
Handles issued and keys rotated after the copy are not in it; deadlines that passed
meanwhile are caught up by the scheduler, in order, when the server starts.

PostgreSQL is backed up with its own tools (pg_dump, base backups and WAL archiving).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from keyturn_server.bootstrap import open_store, unlock
from keyturn_server.cli.local import add_location_arguments, local_settings
from keyturn_server.cli.store_files import (
    PlaceError,
    move_aside,
    private_file,
    refuse_inside,
    sync_dir,
)
from keyturn_server.crypto.master import MasterKeyError
from keyturn_server.domain.access import SYSTEM
from keyturn_server.domain.audit import AuditChain
from keyturn_server.domain.audit_service import AuditService
from keyturn_server.domain.errors import KeyturnError
from keyturn_server.domain.paging import PageTokens
from keyturn_server.process.lock import DataDirInUse, DataDirLock
from keyturn_server.settings import Settings
from keyturn_server.store import lineage
from keyturn_server.store.files import DB_FILE
from keyturn_server.store.schema import LATEST
from keyturn_server.store.sqlite import SqliteStore
from keyturn_server.store.sqlite_connections import StoreOpenError

#: Tables whose row counts the summary shows.
COUNTED = ("keys", "handles", "access_tokens", "audit")


class BackupError(Exception):
    """The one line to print; nothing was changed."""


def register(commands: Any) -> None:
    command = commands.add_parser(
        "backup", help="copy the embedded store while the server runs, or restore a copy"
    )
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="write a verified copy of the store to FILE")
    create.add_argument("file", type=Path, metavar="FILE")
    create.add_argument("--force", action="store_true", help="replace FILE if it exists")
    add_location_arguments(create)
    restore = actions.add_parser(
        "restore", help="put a copy back into a data directory no server is using"
    )
    restore.add_argument("file", type=Path, metavar="FILE")
    restore.add_argument(
        "--force",
        action="store_true",
        help="restore over existing data (it is moved aside, not deleted)",
    )
    add_location_arguments(restore)
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = local_settings(args, os.environ.get("MASTER_KEY") or None)
    if settings.store:
        print(
            "keyturn backup: the store is PostgreSQL; back it up with PostgreSQL's tools "
            "(pg_dump, or base backups with WAL archiving)",
            file=sys.stderr,
        )
        return 2
    try:
        if args.action == "create":
            print(create(settings, args.file, force=args.force))
        else:
            print(restore(settings, args.file, force=args.force))
    except (BackupError, PlaceError) as exc:
        print(f"keyturn backup: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an unwritable target, a parent that is a file, a full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"keyturn backup: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def create(settings: Settings, target: Path, *, force: bool) -> str:
    source = settings.data_dir / DB_FILE
    if not source.exists():
        raise BackupError(f"no Keyturn data in {settings.data_dir}")
    refuse_inside(source, target)
    if target.exists() and not force:
        raise BackupError(f"{target} exists; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    with private_file(target.parent, ".keyturn-backup-") as partial:
        _copy(source, partial)
        summary = _check(partial, settings.master_key)
        os.replace(partial, target)
    sync_dir(target.parent)
    return f"backup: {target} ({target.stat().st_size} bytes): {summary}"


def restore(settings: Settings, backup: Path, *, force: bool) -> str:
    if not backup.is_file():
        raise BackupError(f"{backup} is not a file")
    if not settings.master_key:
        raise BackupError("set MASTER_KEY to the key the copy was made under")
    data_dir = settings.data_dir
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()  # no server may run on the directory while its store is replaced
    except DataDirInUse as exc:
        raise BackupError(str(exc)) from None
    try:
        target = data_dir / DB_FILE
        if target.exists() and not force:
            raise BackupError(
                f"{data_dir} already holds data; pass --force to move it aside and restore"
            )
        # What the replaced store handed out, read before anything moves (store/lineage.py).
        replaced = lineage.handed_out(target)
        with private_file(data_dir, ".keyturn-restore-") as partial:
            _copy(backup, partial)
            summary = _check(partial, settings.master_key)
            try:
                floor = lineage.start_after(partial, replaced)
            except sqlite3.Error as exc:
                raise BackupError(f"cannot prepare the copy's event log: {exc}") from None
            summary += (
                f"; event sequences go on after {floor} (watches resumed from before the "
                "restore are told to start again)"
            )
            # Even without the database: its -wal would be replayed into the copy.
            aside = move_aside(target)
            os.replace(partial, target)
        sync_dir(data_dir)
        moved = f"; what was there is in {', '.join(p.name for p in aside)}" if aside else ""
        asyncio.run(_open_in_place(target, moved))
    finally:
        lock.release()
    return f"restored {backup} into {data_dir}: {summary}{moved}"


def _copy(source: Path, target: Path) -> None:
    """One consistent snapshot of ``source`` as a single self-contained file."""
    try:
        with (
            contextlib.closing(sqlite3.connect(source, timeout=30)) as reader,
            contextlib.closing(sqlite3.connect(target)) as writer,
        ):
            reader.backup(writer)
            writer.execute("PRAGMA journal_mode=DELETE")  # no -wal beside a copy
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source}: {exc}") from None


def _check(copy: Path, master_key: str | None) -> str:
    """Check ``copy`` as a database and, with the master key, as a Keyturn store."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{copy}?mode=ro", uri=True)) as db:
            [(verdict,)] = db.execute("PRAGMA integrity_check").fetchall()
            if verdict != "ok":
                raise BackupError(f"the copy is damaged: {verdict}")
            counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED}  # noqa: S608
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"not a Keyturn store: {exc}") from None
    shown = ", ".join(f"{n} {t.replace('_', ' ')}" for t, n in counts.items())
    if not master_key:
        return f"{shown}; not opened (set MASTER_KEY to check that it opens)"
    return f"{shown}; {asyncio.run(_open(copy, master_key))}"


async def _open(copy: Path, master_key: str) -> str:
    """Open a scratch copy as the server would: keyring, rows, audit chain."""
    with tempfile.TemporaryDirectory(prefix="keyturn-check-") as scratch:
        shutil.copyfile(copy, Path(scratch) / DB_FILE)
        try:
            store = open_store(Settings(data_dir=Path(scratch), master_key=master_key))
        except StoreOpenError as exc:
            if exc.newer:  # what the server would say names the scratch copy
                raise BackupError(
                    f"the copy has schema version {exc.newer}, newer than this server "
                    f"({LATEST}): a newer Keyturn made or upgraded it; restore it with that "
                    "version"
                ) from None
            raise BackupError(f"the copy cannot be used: {exc}") from None
        try:
            keyring, _ = await unlock(store, Path(scratch), master_key, production=True)
            audit = AuditService(store, AuditChain(keyring.audit_key), PageTokens(keyring.page_mac))
            verdict = await audit.verify(SYSTEM)
        except (MasterKeyError, KeyturnError) as exc:
            raise BackupError(f"the copy does not open with this MASTER_KEY: {exc}") from None
        finally:
            await store.close()
    if not verdict.valid:
        raise BackupError(
            f"the copy's audit log is broken at entry {verdict.first_broken}: {verdict.problem}"
        )
    return f"opens with MASTER_KEY, audit log intact ({verdict.checked} entries)"


async def _open_in_place(database: Path, moved: str) -> None:
    """Open the restored file where the server will (WAL, quick_check, schema): what the
    scratch copy showed says nothing of files beside it that SQLite would apply."""
    try:
        # Not upgraded here: the server that starts on it does, the one this restore went
        # back to included (a copy kept before an upgrade is of its older schema).
        store = SqliteStore(database, upgrade=False)
    except (StoreOpenError, sqlite3.Error) as exc:
        if isinstance(exc, StoreOpenError) and exc.older:
            return
        raise BackupError(
            f"the restored store does not open in place ({exc}); do not start a server on it{moved}"
        ) from None
    await store.close()
