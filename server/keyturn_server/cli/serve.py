"""`keyturn serve`: run the server until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from keyturn_server.app import App
from keyturn_server.crypto.master import MasterKeyError
from keyturn_server.domain.errors import KeyturnError
from keyturn_server.observability import logs
from keyturn_server.settings import SettingsError, add_serve_arguments, resolve
from keyturn_server.store.sqlite import StoreOpenError


def register(commands: Any) -> None:
    command = commands.add_parser("serve", help="run the gRPC server")
    add_serve_arguments(command)
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = resolve(args)
        logs.configure(settings.log_level)
    except (SettingsError, ValueError) as exc:
        print(f"keyturn: {exc}", file=sys.stderr)
        return 2
    os.umask(0o077)  # every file the server creates is private to its user
    return asyncio.run(_serve(App(settings)))


async def _serve(app: App) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
    except (MasterKeyError, StoreOpenError, OSError, ValueError, KeyturnError) as exc:
        print(f"keyturn: cannot start: {exc}", file=sys.stderr)
        await app.stop()
        return 1
    if app.admin_token:
        print(
            "\nFirst start: created the admin access token (shown once; also in "
            f"{app.settings.data_dir / 'admin.token'}, mode 0600):\n\n    {app.admin_token}\n\n"
            "Use it as 'authorization: Bearer <token>' and create narrower tokens with "
            "'keyturn token create'.\n",
            flush=True,
        )
    print(f"keyturn listening on {', '.join(_addresses(app))}", flush=True)
    if app.http is not None and app.http.addresses:
        print(f"keyturn HTTP/JSON on {', '.join(app.http.addresses)}", flush=True)
    await stop.wait()
    await app.stop()
    return 0


def _addresses(app: App) -> list[str]:
    return [
        f"{a.rsplit(':', 1)[0]}:{p}" for a, p in zip(app.settings.listen, app.ports, strict=True)
    ]
