"""`keyturn audit list|verify` and `keyturn health`."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from keyturn import AsyncClient
from keyturn.v1 import admin_pb2
from keyturn_server.cli.operator import console as out
from keyturn_server.cli.operator.wiring import REFUSED, command, group
from keyturn_server.settings import parse_duration, parse_positive


def register(commands: Any) -> None:
    audit = group(commands, "audit", "read and verify the audit log")
    c = command(audit, "list", audit_list, "list audit events, oldest first")
    for flag in ("--action", "--principal", "--resource-id"):
        c.add_argument(flag, default="")
    c.add_argument("--since", type=parse_duration, help="only the last ..., e.g. 24h")
    c.add_argument("--descending", action="store_true", help="newest first")
    c.add_argument(
        "--limit", type=parse_positive, default=100, help="at most this many (default 100)"
    )
    command(audit, "verify", audit_verify, "check the hash chain (3: broken)")

    c = command(commands, "health", health, "server health (3: not serving)")
    c.add_argument("--component", default="", help="keys, handles, store or scheduler")


async def audit_list(client: AsyncClient, args: argparse.Namespace) -> int:
    found = client.iter_audit_events(
        action=args.action,
        principal=args.principal,
        resource_id=args.resource_id,
        start_time=datetime.now(UTC) - args.since if args.since else None,
        descending=args.descending,
        limit=args.limit,
    )
    events = [e async for e in found]
    if args.json:
        out.emit_json(admin_pb2.ListAuditEventsResponse(events=events, total_size=len(events)))
        return 0
    out.table(out.AUDIT_COLUMNS, [out.audit_row(e) for e in events])
    return 0


async def audit_verify(client: AsyncClient, args: argparse.Namespace) -> int:
    result = await client.verify_audit_log()
    if args.json:
        out.emit_json(result)
    elif result.valid:
        pruned = (
            f" (from entry {result.first_sequence}: those before it passed the audit retention)"
            if result.first_sequence > 1
            else ""
        )
        print(
            f"audit log intact: {result.entries_checked} entries{pruned}, "
            f"head {result.head_hash.hex()}"
        )
    else:
        print(f"audit log BROKEN at sequence {result.first_broken_sequence}: {result.problem}")
    return 0 if result.valid else REFUSED


async def health(client: AsyncClient, args: argparse.Namespace) -> int:
    report = (await client.get_health(args.component)).health
    out.emit_json(report) if args.json else out.health_details(report)
    return 0 if report.status == admin_pb2.SERVING_STATUS_SERVING else REFUSED
