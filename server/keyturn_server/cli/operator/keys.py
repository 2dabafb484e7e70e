"""`keyturn keys list|get|generate|rotate|remove|restore|disable-version|enable-version`."""

from __future__ import annotations

import argparse
import base64
from collections.abc import Sequence
from typing import Any

from keyturn import AsyncClient
from keyturn.v1 import keys_pb2, resources_pb2
from keyturn_server.cli.operator import console as out
from keyturn_server.cli.operator.wiring import UsageError, change, command, filters, group, pairs


def register(commands: Any) -> None:
    keys = group(commands, "keys", "manage keys on a running server")
    filters(command(keys, "list", keys_list, "list keys"), resources_pb2.KeyStatus, "KEY_STATUS")
    command(keys, "get", keys_get, "show one key").add_argument("key_id")
    c = command(keys, "generate", keys_generate, "generate a key")
    c.add_argument("type", help="encryption, signing, session, api or a custom type")
    c.add_argument("--metadata", action="append", default=[], metavar="K=V")
    c.add_argument("--user-id", default="", help="on behalf of (recorded)")
    c.add_argument("--reveal", action="store_true", help="print the material (exportable types)")
    c = command(keys, "rotate", keys_rotate, "rotate keys, by id or every key of a type")
    c.add_argument("key_ids", nargs="*", metavar="KEY_ID")
    c.add_argument("--all-of-type", metavar="TYPE", help="every key of this type not removed")
    c.add_argument("--concurrency", type=int, default=4, help="rotations in flight (default 4)")
    change(c)
    change(command(keys, "remove", keys_remove, "schedule destruction")).add_argument("key_id")
    change(command(keys, "restore", keys_restore, "cancel destruction")).add_argument("key_id")
    for name, action, text in (
        ("disable-version", keys_disable_version, "refuse every use of a (leaked) version"),
        ("enable-version", keys_enable_version, "let a disabled version be used again"),
    ):
        c = change(command(keys, name, action, text))
        c.add_argument("key_id")
        c.add_argument("version", type=_version, help="the version number (not the primary)")


def show_keys(keys: Sequence[resources_pb2.Key], args: argparse.Namespace) -> None:
    if args.json:
        out.emit_json(keys_pb2.ListKeysResponse(keys=keys, total_size=len(keys)))
    else:
        out.table(out.KEY_COLUMNS, [out.key_row(k) for k in keys])


def show_key(key: resources_pb2.Key, args: argparse.Namespace) -> int:
    out.emit_json(key) if args.json else out.key_details(key)
    return 0


async def keys_list(client: AsyncClient, args: argparse.Namespace) -> int:
    found = client.iter_keys(
        type=args.type,
        status=args.status,
        owner=args.owner,
        page_size=args.page_size,
        limit=args.limit,
    )
    show_keys([k async for k in found], args)
    return 0


async def keys_get(client: AsyncClient, args: argparse.Namespace) -> int:
    return show_key(await client.get_key(args.key_id), args)


async def keys_generate(client: AsyncClient, args: argparse.Namespace) -> int:
    created = await client.generate_key(
        args.type, metadata=pairs(args.metadata), user_id=args.user_id, reveal=args.reveal
    )
    if args.json:
        out.emit_json(created)
        return 0
    out.key_details(created.key)
    if created.material:
        print(f"material (base64, shown once): {base64.b64encode(created.material).decode()}")
    return 0


async def keys_rotate(client: AsyncClient, args: argparse.Namespace) -> int:
    ids = list(args.key_ids)
    if args.all_of_type:
        gone = (resources_pb2.KEY_STATUS_REMOVED, resources_pb2.KEY_STATUS_DESTROYED)
        found = client.iter_keys(type=args.all_of_type, page_size=1000)
        ids += [k.id async for k in found if k.status not in gone]
    elif not ids:
        raise UsageError("name the keys to rotate, or --all-of-type TYPE")
    rotated, failed = await out.each(
        "rotating",
        ids,
        args.concurrency,
        lambda key_id: client.rotate_key(key_id, reason=args.reason, user_id=args.user_id),
    )
    show_keys(rotated, args)
    return 1 if failed else 0


async def keys_remove(client: AsyncClient, args: argparse.Namespace) -> int:
    return show_key(
        await client.remove_key(args.key_id, reason=args.reason, user_id=args.user_id), args
    )


async def keys_restore(client: AsyncClient, args: argparse.Namespace) -> int:
    return show_key(
        await client.restore_key(args.key_id, reason=args.reason, user_id=args.user_id), args
    )


async def keys_disable_version(client: AsyncClient, args: argparse.Namespace) -> int:
    key = await client.disable_key_version(
        args.key_id, args.version, reason=args.reason, user_id=args.user_id
    )
    return show_key(key, args)


async def keys_enable_version(client: AsyncClient, args: argparse.Namespace) -> int:
    key = await client.enable_key_version(
        args.key_id, args.version, reason=args.reason, user_id=args.user_id
    )
    return show_key(key, args)


def _version(text: str) -> int:
    """A version number as argparse reads it: a usage error, not a traceback, otherwise."""
    if not text.isdigit() or not 0 < int(text) < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (1, 2, ...)")
    return int(text)
