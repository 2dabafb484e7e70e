"""`keyturn config get|set`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from keyturn import AsyncClient
from keyturn.v1 import admin_pb2, resources_pb2
from keyturn_server.cli.operator import console as out
from keyturn_server.cli.operator.console import enum_value
from keyturn_server.cli.operator.wiring import UsageError, change, command, group
from keyturn_server.settings import parse_duration


def register(commands: Any) -> None:
    config = group(commands, "config", "read or change the server's configuration")
    command(config, "get", config_get, "show the configuration and its etag")
    c = change(command(config, "set", config_set, "change a type or policy, or apply a file"))
    c.add_argument("file", nargs="?", type=Path, help="a Config in protobuf JSON")
    c.add_argument("--etag", help="etag of the configuration the change is based on")
    c.add_argument("--mask", action="append", default=[], help="update_mask path (with FILE)")
    c.add_argument("--key-type", metavar="NAME", help="set (or --delete) one key type")
    c.add_argument("--handle-type", metavar="NAME", help="set (or --delete) one handle type")
    c.add_argument("--delete", action="store_true", help="delete the custom type named")
    c.add_argument("--policy", action="append", default=[], metavar="NAME=VALUE")
    for flag in ("--algorithm", "--rotation-interval", "--warning-threshold", "--max-lifetime"):
        c.add_argument(flag, help="e.g. 30d, 15m" if "-i" in flag or "-t" in flag else None)
    c.add_argument("--grace-period", help="handle types")
    for flag in ("--key-length", "--handle-length", "--max-usage"):
        c.add_argument(flag, type=int)
    c.add_argument("--exportable", action=argparse.BooleanOptionalAction, help="key types")


async def config_get(client: AsyncClient, args: argparse.Namespace) -> int:
    config = await client.get_config()
    out.emit_json(config) if args.json else out.config_details(config)
    return 0


def _policy(draft: admin_pb2.Config, entry: str) -> str:
    """Sets one policy from NAME=VALUE; returns its update_mask path."""
    name, sep, raw = entry.partition("=")
    policies = draft.security_policies
    field = policies.DESCRIPTOR.fields_by_name.get(name)
    if not sep or field is None:
        known = ", ".join(policies.DESCRIPTOR.fields_by_name)
        raise UsageError(f"--policy takes NAME=VALUE, NAME one of: {known}")
    if name == "revoke_on":
        kinds = [k for k in raw.split(",") if k]
        policies.revoke_on[:] = [
            enum_value(resources_pb2.AnomalyKind, "ANOMALY_KIND", k) for k in kinds
        ]
    elif field.type == field.TYPE_BOOL:
        if raw.lower() not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            raise UsageError(f"{name} is true or false, not {raw!r}")
        setattr(policies, name, raw.lower() in ("true", "yes", "on", "1"))
    else:
        setattr(policies, name, int(raw))
    return f"security_policies.{name}"


async def _typechange(
    client: AsyncClient, args: argparse.Namespace, draft: admin_pb2.Config
) -> str:
    """Sets one key or handle type from the flags, over its current settings; returns its
    update_mask path (a path absent from the draft deletes the type)."""
    kind = "key_types" if args.key_type else "handle_types"
    name = args.key_type or args.handle_type
    if args.delete:
        return f"{kind}.{name}"
    current = getattr(await client.get_config(), kind)
    entry = getattr(draft, kind)[name]
    if name in current:  # the flags change only what they name
        entry.CopyFrom(current[name])
    durations = ["rotation_interval", "warning_threshold", "max_lifetime"]
    numbers = ["key_length"] if kind == "key_types" else ["handle_length", "max_usage"]
    if kind == "handle_types":
        durations.append("grace_period")
    elif args.exportable is not None:
        entry.exportable = args.exportable
    if args.algorithm is not None:
        entry.algorithm = args.algorithm
    for flag in numbers:
        if getattr(args, flag) is not None:
            setattr(entry, flag, getattr(args, flag))
    for flag in durations:
        if getattr(args, flag) is not None:
            getattr(entry, flag).FromTimedelta(parse_duration(getattr(args, flag)))
    return f"{kind}.{name}"


async def config_set(client: AsyncClient, args: argparse.Namespace) -> int:
    given = [x for x in (args.file, args.key_type, args.handle_type, args.policy) if x]
    if len(given) != 1:
        raise UsageError("give one of FILE, --key-type, --handle-type or --policy")
    draft = admin_pb2.Config()
    etag, mask = args.etag, list(args.mask)
    if args.file:
        json_format.Parse(args.file.read_text(), draft)
        etag = etag or draft.etag
    elif args.policy:
        mask = [_policy(draft, entry) for entry in args.policy]
    else:
        mask = [await _typechange(client, args, draft)]
    if not etag:
        raise UsageError("--etag is required; 'keyturn config get' shows the current one")
    updated = await client.update_config(
        draft, etag=etag, update_mask=mask, reason=args.reason, user_id=args.user_id
    )
    out.emit_json(updated) if args.json else out.config_details(updated)
    return 0
