"""`keyturn token create|list|revoke`: manage API access tokens directly in the data
directory (MASTER_KEY from the environment, as for serve). Works while the server runs."""

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
from keyturn_server.crypto.master import MasterKeyError
from keyturn_server.domain.access import Role
from keyturn_server.domain.access_token_service import AccessTokenService
from keyturn_server.domain.audit import AuditChain, AuditLog
from keyturn_server.domain.errors import KeyturnError
from keyturn_server.domain.journal import Journal
from keyturn_server.settings import parse_duration
from keyturn_server.store.sqlite_connections import StoreOpenError


def register(commands: Any) -> None:
    command = commands.add_parser("token", help="manage API access tokens (local)")
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a token and print it")
    create.add_argument("--role", required=True, choices=[r.value.lower() for r in Role])
    create.add_argument("--name", required=True)
    create.add_argument("--ttl", type=parse_duration, help="expire after, e.g. 30d")
    listing = actions.add_parser("list", help="list tokens")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    revoke = actions.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    revoke.add_argument("--reason", default="")
    for sub in (create, listing, revoke):
        add_location_arguments(sub)
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (KeyturnError, MasterKeyError, StoreOpenError, OSError) as exc:
        print(f"keyturn token: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    settings = local_settings(args, os.environ.get("MASTER_KEY") or None)
    async with opened(settings) as store:
        keyring, _ = await unlock(store, settings.data_dir, settings.master_key, production=False)
        clock = SystemClock()
        journal = Journal(AuditLog(AuditChain(keyring.audit_key), lambda _: None), clock)
        service = AccessTokenService(store, keyring, journal, clock)
        operator = local_operator()
        if args.action == "create":
            _, secret = await service.create(
                operator, args.name, Role(args.role.upper()), args.ttl, ""
            )
            print(secret)
        elif args.action == "list":
            print(f"{'NAME':<24} {'ROLE':<9} {'CREATED':<20} {'EXPIRES':<20} REVOKED")
            for t in service.list_tokens(operator, args.all):
                print(
                    f"{t.name:<24} {t.role.value.lower():<9} {_when(t.create_time):<20} "
                    f"{_when(t.expire_time):<20} {_when(t.revoke_time)}"
                )
        else:
            await service.revoke(operator, args.name, "", args.reason)
            print(f"revoked {args.name}")
        return 0


def _when(value: Any) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")
