"""Store size: the same server with a small and a large seeded store.

Scaling: ValidateHandle, GenerateKey, GenerateHandle and GetKey at both sizes. The
slowdown is judged on throughput and on server CPU per request, which a change of
background load between the two sizes hardly moves; the echo-relative slowdown is
printed beside them.

Idle: the CPU time the server process spends over an idle window (nothing due for
days) at both sizes; the scheduler must not cost more when more is stored.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import fixtures, rpcs, seed, servers
from bench.measure import Paired, Pairing
from bench.options import Options
from bench.report import Section, num, ratio, verdict

SCALING_TARGET = 1.20
IDLE_TARGET = 1.20
#: Below this difference per idle minute, CPU time is timer and housekeeping noise.
IDLE_NOISE_SECONDS = 0.1


@dataclass(frozen=True)
class Idle:
    seconds: float
    cpu_seconds: float
    rss_kib: int

    @property
    def cpu_per_minute(self) -> float:
        return self.cpu_seconds * 60 / self.seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_seconds_per_minute": round(self.cpu_per_minute, 3),
            "rss_kib": self.rss_kib,
        }


@dataclass
class SizeRun:
    records: int
    seeded: seed.Seeded
    start_seconds: float
    idle: Idle | None = None
    loads: dict[str, Paired] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "seed_seconds": round(self.seeded.seconds, 1),
            "db_mib": round(self.seeded.db_bytes / 2**20, 1),
            "start_seconds": round(self.start_seconds, 2),
            "idle": self.idle.as_json() if self.idle else None,
            "loads": {label: p.as_json() for label, p in self.loads.items()},
        }


def measure_idle(server: servers.Server, settle: float, seconds: float) -> Idle:
    time.sleep(settle)
    server.check_alive()
    cpu_before, started = server.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    cpu_after, ended = server.cpu_seconds(), time.monotonic()
    return Idle(ended - started, cpu_after - cpu_before, server.rss_kib())


def _configure(data_dir: Path, master_key: str, log: Path) -> None:
    """First start: the store, the master check value, the admin token, the bench type."""
    server = servers.start_keyturn(data_dir, master_key, log)
    try:

        async def configure() -> None:
            token = servers.admin_token(data_dir)
            async with fixtures.admin_client(server.address, token) as client:
                await fixtures.configure(client)

        asyncio.run(configure())
    finally:
        server.stop()


def _size(
    records: int, options: Options, pairing: Pairing, workdir: Path, idle: bool, scaling: bool
) -> SizeRun:
    data_dir = workdir / f"store-{records}"
    master_key = secrets.token_hex(32)
    log = workdir / "logs" / f"store-{records}.log"
    _configure(data_dir, master_key, log)
    print(f"  seeding {records:,} handles and {records:,} keys ...", flush=True)
    seeded = seed.seed(data_dir, master_key, records)
    started = time.monotonic()
    server = servers.start_keyturn(data_dir, master_key, log)
    run = SizeRun(records, seeded, time.monotonic() - started)
    try:
        if idle:
            run.idle = measure_idle(server, options.idle_settle, options.idle_seconds)
            print(
                f"  idle {records:>9,} records: {run.idle.cpu_seconds:.3f} s CPU "
                f"in {run.idle.seconds:.0f} s",
                flush=True,
            )
        if scaling:
            token = servers.admin_token(data_dir)
            # The RPCs that add records go last, so that the reads run on a store of the
            # size named (GenerateKey adds thousands of keys to the small store).
            for rpc in (
                rpcs.validate(seeded.tokens, token),
                rpcs.get_keys(seeded.key_ids, token),
                rpcs.generate_key("encryption", token),
                rpcs.generate_handle(token),
            ):
                run.loads[rpc.label] = paired = pairing.measure(rpc.call, server)
                server.check_alive()
                print(
                    f"  {rpc.label:<24} {records:>9,} records: {paired.rpc.rps:>8,.0f} req/s  "
                    f"ratio {paired.ratio:.2f}",
                    flush=True,
                )
    finally:
        server.stop()
        if not options.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    return run


def run(options: Options, pairing: Pairing, workdir: Path) -> list[Section]:
    idle, scaling = "idle" in options.suites, "scaling" in options.suites
    small, large = (
        _size(n, options, pairing, workdir, idle, scaling)
        for n in (options.small_records, options.large_records)
    )
    sections = []
    if scaling:
        sections.append(_scaling_section(small, large, options))
    if idle:
        sections.append(_idle_section(small, large))
    return sections


def _scaling_section(small: SizeRun, large: SizeRun, options: Options) -> Section:
    s, n = f"{small.records:,}", f"{large.records:,}"
    section = Section(
        key="scaling",
        name="store size",
        title=f"Store size: {s} vs {n} stored handles and keys ({options.describe_load()})",
        columns=[
            "RPC",
            f"req/s @{s}",
            f"req/s @{n}",
            f"p99 ms @{s}",
            f"p99 ms @{n}",
            f"CPU µs/req @{s}",
            f"CPU µs/req @{n}",
            "slowdown (raw)",
            "CPU growth",
            "slowdown (vs echo)",
            "target",
            "verdict",
        ],
        data={"small": small.as_json(), "large": large.as_json()},
    )
    for label, at_small in small.loads.items():
        at_large = large.loads[label]
        raw = at_small.rpc.rps / at_large.rpc.rps if at_large.rpc.rps else float("inf")
        cpu = at_large.cpu_us / at_small.cpu_us if at_small.cpu_us else float("nan")
        vs_echo = at_small.ratio / at_large.ratio if at_large.ratio else float("inf")
        worst = max(raw, cpu) if not math.isnan(cpu) else raw
        met = worst <= SCALING_TARGET
        section.targets.append((f"{label} at {n} within {SCALING_TARGET:.1f}x of {s}", met))
        section.data.setdefault("slowdown", {})[label] = {
            "raw": round(raw, 3),
            "cpu_growth": None if math.isnan(cpu) else round(cpu, 3),
            "vs_echo": round(vs_echo, 3),
        }
        section.rows.append(
            [
                label,
                num(at_small.rpc.rps),
                num(at_large.rpc.rps),
                num(at_small.rpc.p99_ms, 1),
                num(at_large.rpc.p99_ms, 1),
                num(at_small.cpu_us),
                num(at_large.cpu_us),
                ratio(raw),
                ratio(cpu),
                ratio(vs_echo),
                f"<= {SCALING_TARGET:.2f}x",
                verdict(met),
            ]
        )
    section.notes += [
        "slowdown (raw) = req/s at the small size / req/s at the large size; CPU growth = "
        "server CPU per request at the large size / at the small size; slowdown (vs echo) "
        "= the same as raw with each size's req/s divided by the echo run alternated with "
        "it. Above 1.00x the large store is slower. The verdict takes the worse of raw "
        "and CPU growth: throughput and CPU cost must both stay within the target (the "
        "echo-relative figure is shown for reference; on a busy machine the echo run is "
        "the noisiest of all, as it needs the most client CPU).",
        f"Seeding (direct SQLite, server code): {s} in {small.seeded.seconds:.1f} s, "
        f"{n} in {large.seeded.seconds:.1f} s ({large.seeded.db_bytes / 2**20:,.0f} MiB); "
        f"server start {small.start_seconds:.2f} s vs {large.start_seconds:.2f} s.",
        "ValidateHandle and GetKey go round robin over 1,000 seeded handles / keys spread "
        "evenly over the store; seeded records belong to 1,000 owners.",
    ]
    return section


def _idle_section(small: SizeRun, large: SizeRun) -> Section:
    assert small.idle is not None and large.idle is not None
    a, b = small.idle, large.idle
    growth = b.cpu_per_minute / a.cpu_per_minute if a.cpu_per_minute else float("nan")
    met = growth <= IDLE_TARGET or b.cpu_per_minute - a.cpu_per_minute <= IDLE_NOISE_SECONDS
    section = Section(
        key="idle",
        name="idle",
        title="Scheduler idle cost: CPU time of the idle server",
        columns=["stored handles + keys", "idle s", "CPU s", "CPU ms per minute", "RSS MiB"],
        data={
            "small": small.as_json(),
            "large": large.as_json(),
            "growth": None if math.isnan(growth) else round(growth, 3),
        },
    )
    for r, idle in ((small, a), (large, b)):
        section.rows.append(
            [
                f"{r.records:,}",
                num(idle.seconds, 1),
                num(idle.cpu_seconds, 2),
                num(idle.cpu_per_minute * 1000),
                num(idle.rss_kib / 1024, 1),
            ]
        )
    target = (
        f"idle CPU at {large.records:,} within {IDLE_TARGET:.1f}x of {small.records:,} "
        f"(or {IDLE_NOISE_SECONDS * 1000:.0f} ms/min)"
    )
    section.targets.append((target, met))
    section.notes.append(
        f"Growth {ratio(growth)} ({verdict(met)}). CPU from /proc/<pid>/stat (utime+stime, "
        "all threads, 10 ms ticks); every seeded deadline is at least a day ahead."
    )
    return section
