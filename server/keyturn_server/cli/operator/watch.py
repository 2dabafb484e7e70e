"""`keyturn watch keys|handles`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from keyturn import AsyncClient, KeyturnError
from keyturn_server.cli.operator import console as out
from keyturn_server.cli.operator.wiring import command, group, seconds
from keyturn_server.settings import parse_positive


def register(commands: Any) -> None:
    watch = group(commands, "watch", "print expiry, rotation and anomaly events as they come")
    for subject in ("keys", "handles"):
        c = command(watch, subject, watch_events, f"watch {subject}, resuming after reconnects")
        c.set_defaults(subject=subject)
        c.add_argument("--type", action="append", default=[], dest="types", metavar="TYPE")
        c.add_argument("--id", action="append", default=[], dest="ids", metavar="ID")
        c.add_argument(
            "--kind", action="append", default=[], dest="kinds", metavar="KIND", help="e.g. rotated"
        )
        c.add_argument("--owner", default="")
        c.add_argument("--resume-after", type=int, help="replay the events after this sequence")
        c.add_argument("--heartbeats", action="store_true", help="print heartbeats too")
        c.add_argument("--count", type=parse_positive, help="stop after this many events")
        c.add_argument("--duration", type=seconds, help="stop after this many seconds")
        if subject == "handles":
            c.add_argument("--deliver-tokens", action="store_true", help="new secrets (owner)")


async def watch_events(client: AsyncClient, args: argparse.Namespace) -> int:
    """Prints events until --count or --duration (or Ctrl-C); reconnects are reported on
    stderr and resume where the stream broke."""

    def reconnecting(error: KeyturnError | None, delay: float) -> None:
        why = str(error) if error else "the stream ended"
        resume = f"after sequence {watch.last_sequence}" if watch.last_sequence else "afresh"
        print(f"watch: {why}; resuming {resume} in {delay:g}s", file=sys.stderr, flush=True)

    watch = client.watch_expiring(
        args.subject,
        types=args.types,
        ids=args.ids,
        owner=args.owner,
        kinds=args.kinds,
        resume_after=args.resume_after,
        deliver_tokens=getattr(args, "deliver_tokens", False),
        heartbeats=args.heartbeats,
        on_retry=reconnecting,
    )

    async def show() -> None:
        shown = 0
        async for event in watch:
            out.emit_json(event, compact=True) if args.json else print(out.event_line(event))
            sys.stdout.flush()
            shown += 1
            if args.count is not None and shown >= args.count:
                return

    async with watch:
        with contextlib.suppress(TimeoutError):  # --duration is up
            await asyncio.wait_for(show(), args.duration)
    return 0
