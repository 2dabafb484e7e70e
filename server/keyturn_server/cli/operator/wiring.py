"""What every operator command shares: the server flags, the client they describe, how an
action runs and what it exits with, and the argument forms (K=V pairs, secrets on stdin).

The server is --address or KEYTURN_ADDRESS (default 127.0.0.1:50051); the token is
--token, --token-file, KEYTURN_TOKEN, or ./data/admin.token when it exists and the
address is loopback (that file is the local server's admin token). Lists print tables;
--json prints protobuf JSON instead. Exit codes: 0 done, 1 the call failed (or no server
answered within --connect-timeout), 2 bad usage, 3 the answer was "no" (a refused
validation, a server that is not serving, a broken audit log).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from keyturn import (
    NO_RETRY,
    TLS,
    AsyncClient,
    DeadlineExceeded,
    KeyturnError,
    RetryPolicy,
    Unavailable,
    is_loopback,
)
from keyturn_server.cli.operator.console import short_name
from keyturn_server.settings import SettingsError, parse_positive

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TOKEN_FILE = Path("data/admin.token")
REFUSED = 3
#: How long a command waits for a server to answer before saying there is none: the
#: client's own retries would otherwise keep a mistyped address waiting half a minute.
CONNECT_TIMEOUT = 3.0

Action = Callable[[AsyncClient, argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """Arguments that cannot make a request (exit code 2)."""


def seconds(text: str) -> float:
    """A wait in seconds: finite and above zero (a negative or NaN one ended every probe at
    once, and was then reported as no server answering)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    server = common.add_argument_group("server")
    server.add_argument("--address", help="HOST:PORT (KEYTURN_ADDRESS; default 127.0.0.1:50051)")
    server.add_argument("--token", help="bearer token (KEYTURN_TOKEN)")
    server.add_argument("--token-file", type=Path, help="file holding the token")
    transport = server.add_mutually_exclusive_group()
    transport.add_argument(
        "--tls", action="store_true", help="TLS with the system's roots (the default off loopback)"
    )
    transport.add_argument(
        "--plaintext",
        action="store_true",
        help="no TLS even off loopback: only to a TLS-terminating proxy beside you "
        "(KEYTURN_PLAINTEXT=1)",
    )
    server.add_argument("--ca", type=Path, help="CA certificate of the server (implies TLS)")
    server.add_argument("--cert", type=Path, help="client certificate, for mutual TLS")
    server.add_argument("--key", type=Path, help="client private key, for mutual TLS")
    server.add_argument(
        "--server-name",
        help="name the server's certificate must carry, when the address is not it (implies TLS)",
    )
    server.add_argument(
        "--connect-timeout",
        type=seconds,
        help="seconds to wait for the server to answer at all "
        f"(KEYTURN_CONNECT_TIMEOUT; default {CONNECT_TIMEOUT:g})",
    )
    common.add_argument("--json", action="store_true", help="print protobuf JSON")
    return common


#: The flags every operator command takes.
COMMON = _common()


def command(group: Any, name: str, action: Action, text: str) -> argparse.ArgumentParser:
    """A command of ``group`` that runs ``action`` with a client."""
    parser: argparse.ArgumentParser = group.add_parser(name, help=text, parents=[COMMON])
    parser.set_defaults(run=_runner(action))
    return parser


def group(commands: Any, name: str, text: str) -> Any:
    parser = commands.add_parser(name, help=text, description=__doc__.split("\n\n")[1])
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def filters(parser: argparse.ArgumentParser, statuses: Any, prefix: str) -> None:
    parser.add_argument("--type", default="")
    names = [short_name(statuses, prefix, v).lower() for v in statuses.values() if v]
    parser.add_argument("--status", choices=names)
    parser.add_argument("--owner", default="")
    parser.add_argument("--limit", type=parse_positive, help="at most this many")
    parser.add_argument("--page-size", type=int, default=0)


def change(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--reason", default="", help="recorded in the audit log")
    parser.add_argument("--user-id", default="", help="on behalf of (recorded)")
    return parser


def context(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--context", action="append", default=[], metavar="K=V")
    parser.add_argument("--ip", help="context ip")
    parser.add_argument("--user-agent", help="context user_agent")
    parser.add_argument("--user-id", default="", help="on behalf of (recorded)")
    return parser


def connect(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    *,
    retry: RetryPolicy | None = None,
    timeout: float = 30.0,
) -> AsyncClient:
    """The client the flags, else the environment, else the defaults describe."""
    env = os.environ if env is None else env
    address = args.address or env.get("KEYTURN_ADDRESS") or DEFAULT_ADDRESS
    token = args.token
    if token is None and args.token_file is not None:
        token = args.token_file.read_text().strip()
    if token is None:
        token = env.get("KEYTURN_TOKEN")
    # ./data/admin.token belongs to the server on this machine: never offered to another.
    if token is None and is_loopback(address) and DEFAULT_TOKEN_FILE.is_file():
        token = DEFAULT_TOKEN_FILE.read_text().strip()
    # None: TLS unless the address is loopback (the clients' policy); False: plaintext.
    tls: TLS | bool | None = args.tls or None
    if args.ca or args.cert or args.key or args.server_name:
        if args.plaintext:
            raise UsageError(
                "--plaintext cannot be combined with --ca, --cert, --key or --server-name"
            )
        tls = TLS.from_files(args.ca, args.cert, args.key, args.server_name)
    elif args.plaintext or env.get("KEYTURN_PLAINTEXT", "").lower() in ("1", "true", "yes", "on"):
        tls = False
    return AsyncClient(address, token or None, tls, timeout=timeout, retry=retry)


class NoServer(Exception):
    """Nothing answers at the address (exit code 1, one line)."""


async def reach(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> None:
    """Make sure a server answers at all, quickly, before the command's own call (whose
    retries of an unreachable address would take its whole deadline to give up)."""
    env = os.environ if env is None else env
    wait = args.connect_timeout or _connect_timeout(env)
    async with connect(args, env, retry=NO_RETRY, timeout=wait) as probe:
        try:
            await probe.get_health("store")  # cheap; any answer will do, even a refusal
        except (Unavailable, DeadlineExceeded) as exc:
            if exc.reason:  # the server itself said so (its database is away): it is there
                return
            why = "no answer" if isinstance(exc, DeadlineExceeded) else _last_words(exc.message)
            raise NoServer(
                f"no Keyturn server answers at {probe.address} within {wait:g}s ({why}); "
                "start one with 'keyturn serve', or name it with --address or KEYTURN_ADDRESS"
            ) from None
        except KeyturnError:
            return


def _connect_timeout(env: Mapping[str, str]) -> float:
    given = env.get("KEYTURN_CONNECT_TIMEOUT")
    if not given:
        return CONNECT_TIMEOUT
    try:
        return seconds(given)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"KEYTURN_CONNECT_TIMEOUT={exc}") from None


def warn_of_token_argument(args: argparse.Namespace) -> None:
    """Any user of the host reads a process's arguments (/proc/<pid>/cmdline, ps), and the
    shell keeps them in its history: say so once per command, as mysql does for -p."""
    if args.token is not None:
        print(
            "keyturn: warning: a token on the command line is visible to other users of this "
            "host (ps) and stays in your shell history; use KEYTURN_TOKEN or --token-file",
            file=sys.stderr,
        )


def _last_words(message: str) -> str:
    """gRPC's 'failed to connect to all addresses; last error: ...: Connection refused'
    as 'connection refused'."""
    return message.rsplit(": ", 1)[-1].strip().lower() or "unreachable"


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        warn_of_token_argument(args)

        async def main() -> int:
            await reach(args)
            async with connect(args) as client:
                return await action(client, args)

        try:
            return asyncio.run(main())
        except NoServer as exc:
            print(f"keyturn: {exc}", file=sys.stderr)
            return 1
        except KeyturnError as exc:
            print(f"keyturn: {exc}", file=sys.stderr)
            for violation in getattr(exc, "field_violations", ()):
                print(f"  {violation.field}: {violation.description}", file=sys.stderr)
            return 1
        except (UsageError, SettingsError, ValueError, OSError) as exc:
            print(f"keyturn: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130

    return run


def pairs(
    entries: Sequence[str], ip: str | None = None, agent: str | None = None
) -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise UsageError(f"{entry!r} is not KEY=VALUE")
        found[name] = value
    found.update({k: v for k, v in (("ip", ip), ("user_agent", agent)) if v})
    return found


def secret(value: str) -> str:
    """A token argument; "-" reads it from standard input, which keeps it out of `ps`. A
    token given as the argument itself works, with the warning a --token gets."""
    if value == "-":
        return sys.stdin.readline().strip()
    print(
        "keyturn: warning: a handle token on the command line is visible to other users of "
        "this host (ps) and stays in your shell history; give - and send it on standard input",
        file=sys.stderr,
    )
    return value
