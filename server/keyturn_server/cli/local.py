"""Opening a data directory from an operator command (`token`, `master-key`): no server
is needed, and one may be running on the same data."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
from collections.abc import AsyncIterator
from pathlib import Path

from keyturn_server.bootstrap import open_store
from keyturn_server.domain.access import Principal, Role
from keyturn_server.domain.repositories import Store
from keyturn_server.process import hardening
from keyturn_server.settings import Settings
from keyturn_server.store.files import DB_FILE


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory (DATA_DIR, KEY_STORAGE_PATH; ./data)")
    parser.add_argument("--store", help="postgresql://... when the server uses PostgreSQL")


def local_operator() -> Principal:
    """The operator running a command on the data directory, as the audit log names it.
    A uid without a passwd entry (a container run as an arbitrary uid) has no user name:
    getpass raised KeyError there and the command ended in a traceback."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid-{os.getuid()}"
    return Principal(f"local:{user}", Role.ADMIN, "local")


def local_settings(args: argparse.Namespace, master_key: str | None) -> Settings:
    """Where the data is, as `keyturn serve` would find it."""
    data_dir = (
        args.data_dir or os.environ.get("DATA_DIR") or os.environ.get("KEY_STORAGE_PATH") or "data"
    )
    return Settings(
        data_dir=Path(data_dir),
        store=args.store or os.environ.get("KEYTURN_STORE", ""),
        master_key=master_key,
    )


@contextlib.asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Store]:
    if not settings.store and not (settings.data_dir / DB_FILE).exists():
        raise OSError(f"no Keyturn data in {settings.data_dir} (start the server once first)")
    os.umask(0o077)  # whatever the command writes stays private, like the server's files
    # It holds MASTER_KEY (and a rotation NEW_MASTER_KEY) and the keyring while it runs:
    # closed to other processes of the user, as the server is (process/hardening.py).
    hardening.harden()
    store = open_store(settings, upgrade=False)  # the servers on it upgrade it
    try:
        yield store
    finally:
        await store.close()
