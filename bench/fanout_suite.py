"""WatchExpiring fan-out at each subscriber count, against the bare streaming baseline:
a fresh server per measurement, so that memory growth starts from the same point."""

from __future__ import annotations

import asyncio
import secrets
import shutil
from pathlib import Path

from bench import fanout, fixtures, servers
from bench.fanout import FanoutResult, Subscribers
from bench.options import Options
from bench.report import Section, num, ratio, verdict

#: 10,000 subscribers served within a second; under 20 KiB of server memory each.
SERVED_COUNT = 10_000
SERVED_MS = 1000.0
KIB_TARGET = 20.0


def _keyturn(count: int, spread: Subscribers, workdir: Path, keep: bool) -> FanoutResult:
    data_dir = workdir / f"fanout-{count}"
    server = servers.start_keyturn(
        data_dir, secrets.token_hex(32), workdir / "logs" / f"fanout-keyturn-{count}.log"
    )
    try:
        token = servers.admin_token(data_dir)

        async def target_handle() -> str:
            async with fixtures.admin_client(server.address, token) as client:
                await fixtures.configure(client)
                return (await fixtures.generate_handles(client, 1))[0][0]

        handle_id = asyncio.run(target_handle())
        return fanout.measure(
            "keyturn",
            server,
            count,
            spread,
            fanout.keyturn_trigger(server.address, token, handle_id),
            ["--token", token, "--handle-id", handle_id],
        )
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


def _baseline(count: int, spread: Subscribers, workdir: Path) -> FanoutResult:
    server = servers.start_baseline(
        "fanout_server", workdir / "logs" / f"fanout-baseline-{count}.log"
    )
    try:
        return fanout.measure(
            "baseline", server, count, spread, fanout.baseline_trigger(server.address), []
        )
    finally:
        server.stop()


def _row(name: str, r: FanoutResult, base: FanoutResult | None) -> list[str]:
    refused = ", ".join(f"{code} {n}" for code, n in sorted(r.failed.items())) or "0"
    return [
        name,
        f"{r.subscribers:,}",
        f"{r.ready:,}",
        refused,
        f"{r.received:,}",
        num(r.open_seconds, 1),
        num(r.first_ms),
        num(r.p50_ms),
        num(r.last_ms),
        num(r.kib_per_subscriber, 1),
        ratio(r.last_ms / base.last_ms) if base and base.last_ms else "—",
        ratio(r.kib_per_subscriber / base.kib_per_subscriber)
        if base and base.kib_per_subscriber
        else "—",
    ]


def run(options: Options, workdir: Path) -> list[Section]:
    spread = Subscribers(options.watch_processes, options.watch_channels)
    section = Section(
        key="fanout",
        name="fan-out",
        title=f"WatchExpiring fan-out ({spread.processes} subscriber processes x "
        f"{spread.channels} channels)",
        columns=[
            "server",
            "subscribers",
            "ready",
            "refused",
            "got event",
            "open s",
            "first ms",
            "p50 ms",
            "last ms",
            "KiB/subscriber",
            "last vs base",
            "KiB vs base",
        ],
    )
    for count in options.subscribers:
        base = _baseline(count, spread, workdir)
        print(
            f"  baseline {count:>6,} subscribers: last {base.last_ms:,.0f} ms, "
            f"{base.kib_per_subscriber:.1f} KiB each",
            flush=True,
        )
        real = _keyturn(count, spread, workdir, options.keep)
        print(
            f"  keyturn  {count:>6,} subscribers: last {real.last_ms:,.0f} ms, "
            f"{real.kib_per_subscriber:.1f} KiB each",
            flush=True,
        )
        section.rows.append(_row("bare grpc.aio", base, None))
        section.rows.append(_row("keyturn", real, base))
        section.data[str(count)] = {"baseline": base.as_json(), "keyturn": real.as_json()}
        if count >= SERVED_COUNT:
            section.targets.append(
                (
                    f"{count:,} subscribers all served within {SERVED_MS / 1000:g} s",
                    real.all_served and real.last_ms <= SERVED_MS,
                )
            )
        section.targets.append(
            (
                f"under {KIB_TARGET:g} KiB of server RSS per subscriber at {count:,}",
                real.kib_per_subscriber < KIB_TARGET,
            )
        )
    section.notes += [
        "Times run from just before the RemoveHandle (Trigger) call to each subscriber's "
        "receipt, on the system-wide monotonic clock; they include the write and fsync "
        "of the event, and the subscriber processes' own receive work (the baseline's "
        "too).",
        "KiB/subscriber: server VmRSS after every stream is open minus before, / ready "
        "streams. 'refused': streams that ended before their first message, by status.",
        f"Verdicts: {', '.join(f'{t}: {verdict(m)}' for t, m in section.targets)}.",
    ]
    return [section]
