"""The `keyturn` command: `serve`, local `token` management, and operator commands that
talk to a running server over gRPC."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from keyturn_server import __version__
from keyturn_server.cli import backup, masterkey, serve, tokens


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="keyturn", description="Key management and rotating workflow handles over gRPC."
    )
    root.add_argument("--version", action="version", version=f"keyturn {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve.register(commands)
    tokens.register(commands)
    masterkey.register(commands)
    backup.register(commands)
    try:
        from keyturn_server.cli import operator
    except ImportError:  # the operator commands need the client package
        pass
    else:
        operator.register(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
