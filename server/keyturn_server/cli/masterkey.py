"""`keyturn master-key rotate`: move a data directory to a new master key, online.

MASTER_KEY is the current key and NEW_MASTER_KEY the next one (same formats: 32 bytes as
hex or base64, or a passphrase). Running servers keep serving throughout; restart them
with the new MASTER_KEY at your convenience (the old one no longer opens the data).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from keyturn_server.bootstrap import unlock
from keyturn_server.cli.local import (
    add_location_arguments,
    local_operator,
    local_settings,
    opened,
)
from keyturn_server.clock import SystemClock
from keyturn_server.crypto.master import MasterKeyError, new_salt, parse_master_key
from keyturn_server.domain.audit import AuditChain, AuditLog
from keyturn_server.domain.errors import KeyturnError
from keyturn_server.domain.journal import Journal, Resource
from keyturn_server.domain.master_rotation import RotationReport, rotate_master_key
from keyturn_server.domain.repositories import MetaRepository, Repository
from keyturn_server.settings import Settings
from keyturn_server.store.sqlite_connections import StoreOpenError


def register(commands: Any) -> None:
    command = commands.add_parser("master-key", help="rotate the master key (online)")
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    rotate = actions.add_parser(
        "rotate", help="re-wrap the keyring and re-seal every secret under NEW_MASTER_KEY"
    )
    add_location_arguments(rotate)
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    current, following = os.environ.get("MASTER_KEY"), os.environ.get("NEW_MASTER_KEY")
    if not current or not following:
        print(
            "keyturn master-key: set MASTER_KEY (current) and NEW_MASTER_KEY (next)",
            file=sys.stderr,
        )
        return 2
    settings = local_settings(args, current)
    try:
        return asyncio.run(_rotate(settings, following))
    except (MasterKeyError, StoreOpenError, KeyturnError, OSError) as exc:
        print(f"keyturn master-key: {exc}", file=sys.stderr)
        return 1


async def _rotate(settings: Settings, following: str) -> int:
    async with opened(settings) as store:
        keyring, old = await unlock(store, settings.data_dir, settings.master_key, production=False)
        salt = store.read().get_meta("master_salt") or new_salt()
        new = parse_master_key(following, salt, source="NEW_MASTER_KEY")

        def keep_salt(repo: MetaRepository) -> None:
            repo.set_meta("master_salt", salt)

        await store.write(keep_salt)

        def progress(table: str, count: int) -> None:
            print(f"\rre-sealed {count} values ({table})", end="", file=sys.stderr, flush=True)

        # The audit key does not change with the master key: the chain goes on.
        journal = Journal(AuditLog(AuditChain(keyring.audit_key), lambda _: None), SystemClock())
        operator = local_operator()

        def audit(repo: Repository, action: str, report: RotationReport) -> None:
            journal.audit(
                repo,
                action,
                about=Resource("keyring", f"generation-{report.generation}"),
                by=operator,
                details={
                    "generation": str(report.generation),
                    "old_master_key": report.retired,
                    "new_master_key": report.current,
                    **({"resealed": str(report.resealed)} if action == "keyring.rotate" else {}),
                },
            )

        report = await rotate_master_key(store, old, new, progress, audit=audit)
        print(
            f"\nkeyring generation {report.generation}: {report.resealed} values re-sealed; "
            f"the old master key ({report.retired}) no longer opens this data.\n"
            "Restart servers with MASTER_KEY set to the new key.",
            file=sys.stderr,
        )
        return 0
