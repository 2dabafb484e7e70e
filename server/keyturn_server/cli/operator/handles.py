"""`keyturn handles list|get|generate|validate|rotate|remove`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from keyturn import AsyncClient
from keyturn.v1 import handles_pb2, resources_pb2
from keyturn_server.cli.operator import console as out
from keyturn_server.cli.operator.console import short_name
from keyturn_server.cli.operator.wiring import (
    REFUSED,
    UsageError,
    change,
    command,
    context,
    filters,
    group,
    pairs,
    secret,
)


def register(commands: Any) -> None:
    handles = group(commands, "handles", "manage workflow handles on a running server")
    c = command(handles, "list", handles_list, "list handles")
    filters(c, resources_pb2.HandleStatus, "HANDLE_STATUS")
    command(handles, "get", handles_get, "show one handle").add_argument("handle_id")
    c = context(command(handles, "generate", handles_generate, "issue a handle and its secret"))
    c.add_argument("type", help="session, workflow, api, device or a custom type")
    c = context(command(handles, "validate", handles_validate, "check a token (3: refused)"))
    c.add_argument("secret", metavar="TOKEN", help="the secret, or - to read it from stdin")
    c = context(command(handles, "rotate", handles_rotate, "issue a new secret for a handle"))
    c.add_argument("--reason", default="", help="recorded in the audit log")
    c.add_argument("handle_id", nargs="?", default="")
    c.add_argument("--by-token", metavar="TOKEN", help="name it by its secret (- : stdin)")
    c = command(
        handles, "remove", handles_remove, "revoke at once, by id or every handle of an owner"
    )
    c.add_argument("handle_ids", nargs="*", metavar="HANDLE_ID")
    c.add_argument(
        "--all-of-owner",
        metavar="OWNER",
        help="every handle of OWNER that can still validate (revoke OWNER's access token first)",
    )
    c.add_argument("--concurrency", type=int, default=4, help="removals in flight (default 4)")
    change(c)


def show_handle(handle: resources_pb2.Handle, args: argparse.Namespace) -> int:
    out.emit_json(handle) if args.json else out.handle_details(handle)
    return 0


async def handles_list(client: AsyncClient, args: argparse.Namespace) -> int:
    found = client.iter_handles(
        type=args.type,
        status=args.status,
        owner=args.owner,
        page_size=args.page_size,
        limit=args.limit,
    )
    handles = [h async for h in found]
    if args.json:
        out.emit_json(handles_pb2.ListHandlesResponse(handles=handles, total_size=len(handles)))
    else:
        out.table(out.HANDLE_COLUMNS, [out.handle_row(h) for h in handles])
    return 0


async def handles_get(client: AsyncClient, args: argparse.Namespace) -> int:
    return show_handle(await client.get_handle(args.handle_id), args)


async def handles_generate(client: AsyncClient, args: argparse.Namespace) -> int:
    context = pairs(args.context, args.ip, args.user_agent)
    issued = await client.generate_handle(args.type, context=context, user_id=args.user_id)
    if args.json:
        out.emit_json(issued)
    else:
        out.handle_details(issued.handle)
        print(f"token (shown once): {issued.token}")
    return 0


async def handles_validate(client: AsyncClient, args: argparse.Namespace) -> int:
    context = pairs(args.context, args.ip, args.user_agent)
    answer = await client.validate_handle(
        secret(args.secret), context=context, user_id=args.user_id
    )
    v = answer.validation
    if args.json:
        out.emit_json(answer)
    elif v.valid:
        switch = "; a previous secret: switch to the new one" if v.rotated else ""
        print(f"valid: {v.handle_id} ({v.type}), {v.remaining_uses} uses left{switch}")
    else:
        reason = short_name(handles_pb2.ValidationReason, "VALIDATION_REASON", v.reason)
        print(f"refused: {reason.lower()}")
    for anomaly in () if args.json else v.anomalies:
        kind = short_name(resources_pb2.AnomalyKind, "ANOMALY_KIND", anomaly.kind)
        print(f"anomaly: {kind.lower()}", file=sys.stderr)
    return 0 if v.valid else REFUSED


async def handles_rotate(client: AsyncClient, args: argparse.Namespace) -> int:
    if bool(args.handle_id) == bool(args.by_token):
        raise UsageError("give a HANDLE_ID or --by-token TOKEN")
    rotation = await client.rotate_handle(
        args.handle_id,
        token=secret(args.by_token) if args.by_token else "",
        context=pairs(args.context, args.ip, args.user_agent),
        reason=args.reason,
        user_id=args.user_id,
    )
    if args.json:
        out.emit_json(rotation)
    else:
        out.handle_details(rotation.handle)
        print(f"previous secret valid until {out.when(rotation.previous_valid_until)}")
        print(f"token (shown once): {rotation.token}")
    return 0


#: Handles that can still validate: what a compromised owner's handles must stop being.
_LIVE = (resources_pb2.HANDLE_STATUS_ACTIVE, resources_pb2.HANDLE_STATUS_EXPIRING)


async def handles_remove(client: AsyncClient, args: argparse.Namespace) -> int:
    """Revoke handles by id, or every live handle of a compromised owner: the incident
    Vault answers with revoke-prefix and SPIRE with a ban. Before, the on-call had to
    list the owner's handles and remove them one command at a time."""
    ids = list(args.handle_ids)
    if args.all_of_owner:
        found = client.iter_handles(owner=args.all_of_owner, page_size=1000)
        ids += [h.id async for h in found if h.status in _LIVE and h.owner == args.all_of_owner]
    elif len(ids) == 1:
        handle = await client.remove_handle(ids[0], reason=args.reason, user_id=args.user_id)
        return show_handle(handle, args)
    elif not ids:
        raise UsageError("name the handles to remove, or --all-of-owner OWNER")
    done, failed = await out.each(
        "removing",
        ids,
        args.concurrency,
        lambda handle_id: client.remove_handle(handle_id, reason=args.reason, user_id=args.user_id),
    )
    if args.json:
        out.emit_json(handles_pb2.ListHandlesResponse(handles=done, total_size=len(done)))
    else:
        out.table(out.HANDLE_COLUMNS, [out.handle_row(h) for h in done])
    return 1 if failed else 0
