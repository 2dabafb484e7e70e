"""Paired measurements: every run of an RPC alternates with a run of the echo baseline,
so that a ratio compares two figures taken under the same background load. On a shared
two-core machine the absolute figures move with whatever else runs.

Each run also reads the server's CPU time from /proc: CPU per request hardly depends on
how much CPU the neighbours take, so it is the steadiest figure of the lot.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import ghz
from bench.ghz import Call, Load, LoadResult
from bench.servers import Server

#: Lets a server finish what the previous run left in flight before the next one.
PAUSE = 0.2


def _median(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


def combine(results: list[LoadResult]) -> LoadResult:
    """Rounds into one figure: counts added, rates and latencies by median."""
    codes: Counter[str] = Counter()
    samples: Counter[str] = Counter()
    for r in results:
        codes.update(r.codes)
        samples.update(r.error_samples)
    return LoadResult(
        ok=sum(r.ok for r in results),
        errors=sum(r.errors for r in results),
        seconds=sum(r.seconds for r in results),
        p50_ms=_median([r.p50_ms for r in results]),
        p99_ms=_median([r.p99_ms for r in results]),
        codes=dict(codes),
        error_samples=dict(samples),
        median_rps=_median([r.rps for r in results]),
    )


@dataclass(frozen=True)
class Paired:
    """An RPC's figures, the echo baseline's taken alternately with them, and the
    median of the per-round ratios of requests per second."""

    rpc: LoadResult
    echo: LoadResult
    ratio: float
    #: (RPC req/s, echo req/s) of every round, to judge the noise.
    rounds: list[tuple[float, float]]
    #: Server CPU time (all threads) per successful request, in microseconds.
    cpu_us: float
    echo_cpu_us: float

    def as_json(self) -> dict[str, Any]:
        return {
            **self.rpc.as_json(),
            "cpu_us_per_request": round(self.cpu_us, 1),
            "echo": {**self.echo.as_json(), "cpu_us_per_request": round(self.echo_cpu_us, 1)},
            "ratio_to_echo": round(self.ratio, 4),
            "rounds": [[round(r, 1), round(e, 1)] for r, e in self.rounds],
        }


@dataclass
class _Runs:
    """The runs of one server in a measurement, and the CPU time it spent in them."""

    results: list[LoadResult] = field(default_factory=list)
    cpu_seconds: float = 0.0

    def run(self, call: Call, load: Load, server: Server, workdir: Path) -> LoadResult:
        before = server.cpu_seconds()
        result = ghz.run(call, load, server.address, workdir)
        self.cpu_seconds += server.cpu_seconds() - before
        self.results.append(result)
        return result

    @property
    def cpu_us(self) -> float:
        ok = sum(r.ok for r in self.results)
        return self.cpu_seconds / ok * 1e6 if ok else float("nan")


@dataclass(frozen=True)
class Pairing:
    """Where the echo baseline runs and how each measurement is split into rounds."""

    echo_call: Call
    echo: Server
    load: Load
    rounds: int
    workdir: Path
    #: Where the echo baselines are pinned (taskset), "" for nowhere.
    echo_cpus: str = ""

    def warm_echo(self) -> None:
        warm = replace(self.load, seconds=max(self.load.warmup, 0.2), warmup=0.0)
        ghz.run(self.echo_call, warm, self.echo.address, self.workdir)

    def measure(self, call: Call, server: Server) -> Paired:
        share = replace(self.load, seconds=self.load.seconds / self.rounds, warmup=0.0)
        if self.load.warmup > 0:
            warm = replace(self.load, seconds=self.load.warmup, warmup=0.0)
            ghz.run(call, warm, server.address, self.workdir)
            time.sleep(PAUSE)
        rpc, echo = _Runs(), _Runs()
        for _ in range(self.rounds):
            echo.run(self.echo_call, share, self.echo, self.workdir)
            rpc.run(call, share, server, self.workdir)
            time.sleep(PAUSE)
        pairs = list(zip(rpc.results, echo.results, strict=True))
        return Paired(
            rpc=combine(rpc.results),
            echo=combine(echo.results),
            ratio=_median([r.rps / e.rps for r, e in pairs if e.rps]),
            rounds=[(r.rps, e.rps) for r, e in pairs],
            cpu_us=rpc.cpu_us,
            echo_cpu_us=echo.cpu_us,
        )
