"""`keyturn serve`: run the server until SIGTERM or SIGINT, then shut down gracefully;
SIGHUP reads the certificate and --client-identities again.

With ``--workers N`` (N > 1) this process becomes the supervisor of N serving processes
(process/supervisor.py); each of them runs this command again as a worker. A server that
cannot start says why in one line on stderr and exits 1 (2 for bad flags).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import sys
from pathlib import Path
from typing import Any

from keyturn_server.app import App
from keyturn_server.bootstrap import prepare
from keyturn_server.crypto.master import MasterKeyError
from keyturn_server.crypto.native import NativeMissing
from keyturn_server.domain.errors import KeyturnError
from keyturn_server.flags import add_serve_arguments
from keyturn_server.observability import logs
from keyturn_server.process import collector, hardening, memory, overrun
from keyturn_server.process.lock import DataDirInUse, DataDirLock
from keyturn_server.process.supervisor import StartFailed, Supervisor
from keyturn_server.settings import Settings, SettingsError, resolve
from keyturn_server.store.sqlite_connections import StoreOpenError

#: What ends a start with one line instead of a traceback.
START_ERRORS = (
    MasterKeyError,
    NativeMissing,
    StoreOpenError,
    OSError,
    ValueError,
    KeyturnError,
    StartFailed,
)


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
    hardening.harden()  # no core file, no reading of its memory by the same user
    hardening.withhold_secrets()  # read into settings: no child inherits them
    memory.return_large_buffers()  # a flood of large requests leaves no heap behind
    if settings.worker is not None:  # the supervisor holds the data directory
        return asyncio.run(_serve(App(settings)))
    lock = DataDirLock(settings.data_dir) if not settings.store else None
    try:
        if lock is not None:
            lock.acquire()
    except DataDirInUse as exc:
        print(f"keyturn: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a read-only filesystem, a file where the directory should be
        print(
            f"keyturn: cannot start: {unusable_data_dir(settings.data_dir, exc)}", file=sys.stderr
        )
        return 1
    try:
        if settings.workers > 1:
            inherit = lock.fds if lock is not None else ()
            return asyncio.run(_supervise(settings, sys.argv[1:], inherit))
        return asyncio.run(_serve(App(settings)))
    finally:
        if lock is not None:
            lock.release()


def unusable_data_dir(data_dir: Path, exc: OSError) -> str:
    """One line for a data directory the server cannot lock: what, where, what to do."""
    where = exc.filename or data_dir
    why = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        hint = "the server writes its database there: mount it read-write"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space on its filesystem"
    elif isinstance(exc, FileExistsError | NotADirectoryError):
        hint = "something other than a directory is in the way"
    else:
        hint = "the server must be able to create and write files there"
    return (
        f"the data directory {data_dir} cannot be used ({why}: {where}); {hint}, "
        "or give --data-dir another directory"
    )


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _serve(app: App) -> int:
    stop = _stop_on_signals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app.reload)
    try:
        await app.start()
    except START_ERRORS as exc:
        print(f"keyturn: cannot start: {exc}", file=sys.stderr)
        await app.stop()
        return 1
    collector.settle_after_start()
    role = app.settings.worker
    if role is not None:
        try:
            os.write(role.ready_fd, b"ready\n")
        except BrokenPipeError:  # the supervisor is gone (killed while this one started)
            os.close(role.ready_fd)
            await app.stop()
            return 1
        os.set_blocking(role.ready_fd, False)  # a busy supervisor must not stall the loop
        watching = asyncio.ensure_future(_keep_in_touch(app, role.ready_fd, stop))
    else:
        _announce(app.settings, app.admin_token, _addresses(app.settings.listen, app.ports))
        if app.http is not None and app.http.addresses:
            print(f"keyturn HTTP/JSON on {', '.join(app.http.addresses)}", flush=True)
    await stop.wait()
    if role is not None:
        watching.cancel()
    watch = overrun.StopWatch(
        asyncio.get_running_loop(), app.settings.grace_period.total_seconds() + overrun.OVERRUN
    )
    watch.start()
    await app.stop()
    watch.cancel()
    return 0


async def _keep_in_touch(app: App, pipe: int, stop: asyncio.Event) -> None:
    """Once a second, from the event loop, tell the supervisor this worker runs (it kills
    one that stops saying so: --worker-timeout); stop when the supervisor is gone."""
    try:
        while not stop.is_set():
            if app.membership is not None and app.membership.orphaned():
                stop.set()
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(pipe, b".")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        os.close(pipe)


async def _supervise(settings: Settings, argv: list[str], inherit: tuple[int, ...]) -> int:
    stop = _stop_on_signals()
    supervisor = Supervisor(settings, argv, inherit)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, supervisor.reload)
    try:
        for warning in supervisor.reserve_ports():  # a port in use: before anything is made
            print(f"keyturn: {warning}", file=sys.stderr)
        admin_token = await prepare(settings)
        await supervisor.start()
    except START_ERRORS as exc:
        print(f"keyturn: cannot start: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await supervisor.stop()
        return 1
    _announce(settings, admin_token, list(supervisor.listen), f" ({settings.workers} workers)")
    if supervisor.http_listen:
        scheme = "https" if settings.tls else "http"
        shown = ", ".join(f"{scheme}://{a}" for a in supervisor.http_listen)
        print(f"keyturn HTTP/JSON on {shown}", flush=True)
    return await supervisor.supervise(stop)


def _announce(
    settings: Settings, admin_token: str | None, addresses: list[str], how: str = ""
) -> None:
    if admin_token:
        print(
            "\nFirst start: created the admin access token (shown once; also in "
            f"{settings.data_dir / 'admin.token'}, mode 0600):\n\n    {admin_token}\n\n"
            "Use it as 'authorization: Bearer <token>' and create narrower tokens with "
            "'keyturn token create'.\n",
            flush=True,
        )
    print(f"keyturn listening on {', '.join(addresses)}{how}", flush=True)


def _addresses(listen: tuple[str, ...], ports: list[int]) -> list[str]:
    return [f"{a.rsplit(':', 1)[0]}:{p}" for a, p in zip(listen, ports, strict=True)]
