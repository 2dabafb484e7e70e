"""Every core on one host: ``keyturn serve --workers 2`` against ``--workers 1``.

ValidateHandle throughput of the two servers, alternated round by round under the same
ghz load (which needs a core of its own on this two-core machine), and the CPU of each
server's whole process tree per request. Then the cross-process wake-up: subscribers on
separate connections (so spread over the workers) wait for one REVOKED event at a time,
and the time from the RemoveHandle call to each subscriber's receipt is taken with both
servers; the difference is what reaching another worker costs (a datagram and a read of
the event log, server/keyturn_server/process/peers.py).
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import grpc

from bench import fixtures, ghz, rpcs, servers
from bench.ghz import LoadResult
from bench.options import Options
from bench.report import Section, num, ratio, verdict
from keyturn.v1 import events_pb2, handles_pb2_grpc

TARGET = 1.3
SUBSCRIBERS = 32
WAKEUPS = 20


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def _wakeups(address: str, token: str, count: int) -> list[float]:
    """Milliseconds from each RemoveHandle call to each subscriber's receipt."""
    metadata = (("authorization", f"Bearer {token}"),)
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(SUBSCRIBERS)
    ]
    request = events_pb2.WatchExpiringRequest(
        types=[fixtures.HANDLE_TYPE], kinds=[events_pb2.EVENT_KIND_REVOKED]
    )
    streams = [
        handles_pb2_grpc.HandleServiceStub(c).WatchExpiring(request, metadata=metadata)
        for c in channels
    ]
    delays: list[float] = []
    try:
        for stream in streams:
            while cast(Any, await stream.read()).kind != events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE:
                pass
        async with fixtures.admin_client(address, token) as client:
            for _ in range(count):
                made = await client.generate_handle(fixtures.HANDLE_TYPE)

                async def receipt(stream: object, started: float) -> float:
                    while True:
                        event = await stream.read()  # type: ignore[attr-defined]
                        if event.kind == events_pb2.EVENT_KIND_REVOKED:
                            return (time.perf_counter() - started) * 1000

                started = time.perf_counter()
                waiting = [asyncio.ensure_future(receipt(s, started)) for s in streams]
                await client.remove_handle(made.handle.id)
                delays += await asyncio.wait_for(asyncio.gather(*waiting), 30)
    finally:
        for stream in streams:
            stream.cancel()
        for channel in channels:
            await channel.close(None)
    return delays


def run(options: Options, echo_call: ghz.Call, workdir: Path) -> list[Section]:
    del echo_call  # the two servers are each other's baseline here
    started: dict[int, servers.Server] = {}
    try:
        calls = {}
        tokens = {}
        for count in (1, 2):
            data_dir = workdir / f"workers-{count}"
            server = started[count] = servers.start_keyturn(
                data_dir,
                secrets.token_hex(32),
                workdir / "logs" / f"workers-{count}.log",
                ("--workers", str(count)),
                cpus=options.server_cpus,
            )
            tokens[count] = servers.admin_token(data_dir)
            prepared = asyncio.run(fixtures.prepare(server.address, tokens[count], options.handles))
            calls[count] = rpcs.validate(prepared.tokens, tokens[count]).call
        load = replace(options.load, seconds=options.load.seconds / options.rounds, warmup=0.0)
        results: dict[int, list[LoadResult]] = {1: [], 2: []}
        cpu = {1: 0.0, 2: 0.0}
        for count, server in started.items():
            ghz.run(
                calls[count],
                replace(load, seconds=max(options.load.warmup, 0.5)),
                server.address,
                workdir,
            )
        for _ in range(options.rounds):
            for count, server in started.items():
                before = server.cpu_seconds()
                results[count].append(ghz.run(calls[count], load, server.address, workdir))
                cpu[count] += server.cpu_seconds() - before
                server.check_alive()
                time.sleep(0.2)
        rounds = [(two.rps, one.rps) for two, one in zip(results[2], results[1], strict=True)]
        gain = _median([t / o for t, o in rounds if o])
        wakeups = {
            count: asyncio.run(_wakeups(server.address, tokens[count], WAKEUPS))
            for count, server in started.items()
        }
    finally:
        for server in started.values():
            server.stop()
    return [_throughput(options, results, cpu, rounds, gain), _latency(wakeups)]


def _throughput(
    options: Options,
    results: dict[int, list[LoadResult]],
    cpu: dict[int, float],
    rounds: list[tuple[float, float]],
    gain: float,
) -> Section:
    met = gain >= TARGET
    section = Section(
        key="workers",
        name="workers",
        title=f"ValidateHandle, --workers 2 vs --workers 1 ({options.describe_load()})",
        columns=[
            "server",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "CPU µs/req",
            "ratio",
            "target",
            "verdict",
        ],
    )
    for count in (1, 2):
        runs = results[count]
        ok = sum(r.ok for r in runs)
        section.rows.append(
            [
                f"--workers {count}",
                num(_median([r.rps for r in runs])),
                num(_median([r.p50_ms for r in runs]), 1),
                num(_median([r.p99_ms for r in runs]), 1),
                num(sum(r.errors for r in runs)),
                num(cpu[count] / ok * 1e6 if ok else float("nan")),
                ratio(gain) if count == 2 else "1.00x",
                f">= {TARGET:.1f}" if count == 2 else "—",
                verdict(met) if count == 2 else "—",
            ]
        )
        section.data[f"workers_{count}"] = {
            "rounds_rps": [round(r.rps, 1) for r in runs],
            "cpu_us_per_request": round(cpu[count] / ok * 1e6, 1) if ok else None,
        }
    section.data["ratio"] = round(gain, 4)
    section.data["rounds"] = [[round(t, 1), round(o, 1)] for t, o in rounds]
    section.targets.append((f"--workers 2 >= {TARGET:.1f} x --workers 1", met))
    section.notes += [
        "Both servers alternate under the same load; ratio is the median of the per-round "
        "ratios. CPU is the whole process tree's (supervisor and workers).",
        "On two cores ghz takes one, so the second worker competes with the load tool; the "
        "gain is what is left after that.",
    ]
    print(f"  --workers 2 vs 1          ratio {gain:.2f}")
    return section


def _latency(wakeups: dict[int, list[float]]) -> Section:
    section = Section(
        key="wakeup",
        name="wake-up",
        title=f"WatchExpiring across workers: RemoveHandle to each of {SUBSCRIBERS} "
        f"subscribers (ms, {WAKEUPS} events)",
        columns=["server", "p50", "p90", "max"],
    )
    for count, delays in wakeups.items():
        section.rows.append(
            [
                f"--workers {count}",
                num(_median(delays), 2),
                num(_percentile(delays, 0.9), 2),
                num(max(delays) if delays else float("nan"), 2),
            ]
        )
        section.data[f"workers_{count}"] = {
            "p50_ms": round(_median(delays), 3),
            "p90_ms": round(_percentile(delays, 0.9), 3),
            "max_ms": round(max(delays), 3) if delays else None,
        }
    section.notes.append(
        "Subscribers on separate connections, so spread over the workers; with two, about "
        "half hear of the event from another process (a datagram, then a read of the event "
        "log). The safety net under it, PRAGMA data_version, is checked every 2 s."
    )
    print(f"  wake-up p90 ms: {section.rows[0][2]} (1 worker), {section.rows[-1][2]} (2 workers)")
    return section
