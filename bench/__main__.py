"""``python -m bench``: run the Keyturn benchmarks, print the results table, and write it
to ``bench/results/`` as JSON and Markdown. See bench/README.md."""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench import (
    fanout_suite,
    ghz,
    http_suite,
    inprocess_suite,
    rpc_suite,
    rpcs,
    servers,
    store_suite,
)
from bench.fixtures import HANDLE_LENGTH, HANDLE_TYPE
from bench.measure import Pairing
from bench.options import Options, parse
from bench.report import Report, write
from keyturn_server.domain import tokens


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _meta(options: Options, argv: Sequence[str]) -> dict[str, Any]:
    return {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "mode": options.mode,
        "suites": list(options.suites),
        "load": options.describe_load(),
        "concurrency": options.load.concurrency,
        "cpus": os.cpu_count(),
        "loadavg_start": _loadavg(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "ghz": ghz.GHZ_VERSION,
    }


def run(options: Options, argv: Sequence[str]) -> Report:
    report = Report(_meta(options, argv))
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="keyturn-bench-"))
    echo: servers.Server | None = None
    try:
        if "inprocess" in options.suites:
            print("in process, no gRPC ...", flush=True)
            report.sections += inprocess_suite.run(options, workdir)
        if {"rpc", "scaling", "idle"} & set(options.suites):
            # Only these suites load a server with ghz against the echo baseline.
            ghz.ensure_ghz()
            echo = servers.start_baseline("echo_server", workdir / "logs" / "echo.log")
            pairing = Pairing(
                rpcs.echo(tokens.new_token(HANDLE_TYPE, HANDLE_LENGTH)),
                echo,
                options.load,
                options.rounds,
                workdir,
            )
            pairing.warm_echo()
            if "rpc" in options.suites:
                print("per-RPC throughput ...", flush=True)
                report.sections += rpc_suite.run(options, pairing, workdir)
            if "scaling" in options.suites or "idle" in options.suites:
                print("store size (scaling, idle) ...", flush=True)
                report.sections += store_suite.run(options, pairing, workdir)
        if "http" in options.suites:
            print("HTTP/JSON ValidateHandle (h2load) ...", flush=True)
            report.sections += http_suite.run(options, workdir)
        if "fanout" in options.suites:
            print("WatchExpiring fan-out ...", flush=True)
            report.sections += fanout_suite.run(options, workdir)
    finally:
        if echo is not None:
            echo.stop()
        if options.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.meta["loadavg_end"] = _loadavg()
    report.meta["seconds"] = round(time.monotonic() - started, 1)
    return report


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through every `finally`, which stops the servers started.
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = list(sys.argv[1:] if argv is None else argv)
    options = parse(args)
    report = run(options, args)
    json_path, md_path = write(report, options.out)
    print()
    print(report.markdown())
    print(f"results: {md_path}\n         {json_path}  ({report.meta['seconds']} s)")
    missed = [t for _, t, met in report.targets() if met is False]
    return 1 if options.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
