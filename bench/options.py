"""The command line of ``python -m bench``: full mode by default, ``--quick`` for a smoke
run under a minute, and flags for every size and duration."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.ghz import Load
from bench.report import RESULTS_DIR

SUITES = ("inprocess", "rpc", "http", "scaling", "idle", "fanout")
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    mode: str
    suites: tuple[str, ...]
    load: Load
    rounds: int
    handles: int
    small_records: int
    large_records: int
    subscribers: tuple[int, ...]
    watch_processes: int
    watch_channels: int
    idle_seconds: float
    idle_settle: float
    profile_seconds: float
    out: Path
    keep: bool
    strict: bool
    #: Only these RPC labels in the rpc suite (empty: all), e.g. ("ValidateHandle",).
    rpcs: tuple[str, ...] = ()

    def describe_load(self) -> str:
        return f"{self.load.describe()} per RPC in {self.rounds} round(s)"


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1000,10000") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("give at least one positive number")
    return sizes


def _suites(text: str) -> tuple[str, ...]:
    chosen = tuple(part for part in text.split(",") if part)
    unknown = [s for s in chosen if s not in SUITES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown suite {unknown[0]!r}; one of {SUITES}")
    return chosen


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Keyturn benchmarks: per-RPC throughput against a bare grpc.aio echo "
        "server, store-size scaling, scheduler idle cost, WatchExpiring fan-out.",
    )
    p.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    p.add_argument(
        "--only", type=_suites, help=f"comma-separated suites to run, of {','.join(SUITES)}"
    )
    p.add_argument(
        "--rpcs", help="rpc suite: only these RPCs, comma-separated labels (e.g. ValidateHandle)"
    )
    p.add_argument("--seconds", type=float, help="measured seconds per RPC (full 6, quick 0.5)")
    p.add_argument("--rounds", type=int, help="RPC/echo alternations per RPC (full 6, quick 1)")
    p.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each RPC (full 0.5, quick 0)"
    )
    p.add_argument("--connections", type=int, default=16, help="HTTP/2 connections (16)")
    p.add_argument("--streams", type=int, default=8, help="calls in flight per connection (8)")
    p.add_argument("--records", type=int, help="large store size (full 100000, quick 10000)")
    p.add_argument("--million", action="store_true", help="large store of 1,000,000 records")
    p.add_argument("--small-records", type=int, help="small store size (1000)")
    p.add_argument(
        "--subscribers", type=_sizes, help="fan-out sizes (full 1000,10000; quick 100,1000)"
    )
    p.add_argument("--watch-processes", type=int, default=2, help="subscriber processes (2)")
    p.add_argument("--watch-channels", type=int, default=8, help="channels per process (8)")
    p.add_argument("--idle-seconds", type=float, help="idle window (full 60, quick 2)")
    p.add_argument(
        "--profile",
        type=float,
        nargs="?",
        const=8.0,
        default=0.0,
        metavar="SECONDS",
        help="sample the server with py-spy under ValidateHandle load (default 8 s)",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--keep", action="store_true", help="keep the work directory (data, logs)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return p


def _pick(value: T | None, full: T, smoke: T, quick: bool) -> T:
    """The flag's value if given, else the mode's default."""
    if value is not None:
        return value
    return smoke if quick else full


def parse(argv: Sequence[str] | None = None) -> Options:
    args = parser().parse_args(argv)
    quick = bool(args.quick)
    large: int = 1_000_000 if args.million else _pick(args.records, 100_000, 10_000, quick)
    suites = args.only or SUITES
    return Options(
        mode="quick" if quick else "full",
        suites=tuple(s for s in SUITES if s in suites),
        load=Load(
            connections=args.connections,
            streams=args.streams,
            seconds=_pick(args.seconds, 6.0, 0.5, quick),
            warmup=_pick(args.warmup, 0.5, 0.0, quick),
        ),
        rounds=_pick(args.rounds, 6, 1, quick),
        handles=64,
        small_records=_pick(args.small_records, 1000, 1000, quick),
        large_records=large,
        subscribers=_pick(args.subscribers, (1000, 10_000), (100, 1000), quick),
        watch_processes=args.watch_processes,
        watch_channels=args.watch_channels,
        idle_seconds=_pick(args.idle_seconds, 60.0, 2.0, quick),
        idle_settle=1.0 if quick else 5.0,
        profile_seconds=float(args.profile),
        out=args.out,
        keep=bool(args.keep),
        strict=bool(args.strict),
        rpcs=tuple(part for part in (args.rpcs or "").split(",") if part),
    )
