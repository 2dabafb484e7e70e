"""The baseline protocol (proto/baseline.proto), loaded at run time by grpcio-tools so
that the Python servers and the load generator read the very same file."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

PROTO_DIR = Path(__file__).resolve().parent / "proto"
PROTO_FILE = PROTO_DIR / "baseline.proto"
ECHO_METHOD = "keyturnbench.v1.Echo.Echo"


def load() -> tuple[ModuleType, ModuleType]:
    """(messages, services): the ``baseline_pb2`` and ``baseline_pb2_grpc`` modules."""
    import grpc

    if str(PROTO_DIR) not in sys.path:
        sys.path.append(str(PROTO_DIR))
    messages, services = grpc.protos_and_services(PROTO_FILE.name)
    return messages, services


def wait_argument() -> float:
    """The value of ``--wait-ms N`` in seconds (default 0)."""
    args = sys.argv[1:]
    if "--wait-ms" in args and args.index("--wait-ms") + 1 < len(args):
        return float(args[args.index("--wait-ms") + 1]) / 1000
    return 0.0


def listen_argument() -> str:
    """The value of ``--listen HOST:PORT`` on the command line (default 127.0.0.1:0)."""
    args = sys.argv[1:]
    if "--listen" in args and args.index("--listen") + 1 < len(args):
        return args[args.index("--listen") + 1]
    return "127.0.0.1:0"
