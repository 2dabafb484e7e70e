"""Per-RPC throughput and latency of a fresh Keyturn server, each RPC against the echo
baseline at the same concurrency; optionally a py-spy profile under ValidateHandle."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from bench import fixtures, profile, rpcs, servers
from bench.measure import Paired, Pairing
from bench.options import Options
from bench.report import Section, num, ratio, verdict

VALIDATE_TARGET = 0.70
#: What a durable answer waits for, about: the rest of the commit in flight, then its own.
COMMIT_WAIT_MS = 1.0


def _row(label: str, paired: Paired, target: str, met: bool | None) -> list[str]:
    r = paired.rpc
    return [
        label,
        num(r.rps),
        num(r.p50_ms, 1),
        num(r.p99_ms, 1),
        num(r.errors),
        num(paired.echo.rps),
        ratio(paired.ratio),
        num(paired.cpu_us),
        num(paired.echo_cpu_us),
        target,
        verdict(met),
    ]


def run(options: Options, pairing: Pairing, workdir: Path) -> list[Section]:
    data_dir = workdir / "rpc-data"
    server = servers.start_keyturn(data_dir, secrets.token_hex(32), workdir / "logs/rpc.log")
    try:
        token = servers.admin_token(data_dir)
        prepared = asyncio.run(fixtures.prepare(server.address, token, options.handles))
        section = Section(
            key="rpc",
            name="per RPC",
            title=f"Per RPC ({options.describe_load()})",
            columns=[
                "RPC",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "echo req/s",
                "ratio to echo",
                "CPU µs/req",
                "echo CPU µs/req",
                "target",
                "verdict",
            ],
        )
        for rpc in rpcs.per_rpc(prepared, token):
            if options.rpcs and rpc.label not in options.rpcs:
                continue
            paired = pairing.measure(rpc.call, server)
            server.check_alive()
            target, met = "—", None
            if rpc.label == rpcs.VALIDATE:
                target = f">= {VALIDATE_TARGET:.2f}"
                met = paired.ratio >= VALIDATE_TARGET
                section.targets.append((f"ValidateHandle >= {VALIDATE_TARGET:.2f} x echo", met))
            section.rows.append(_row(rpc.label, paired, target, met))
            section.data[rpc.label] = paired.as_json()
            print(f"  {rpc.label:<24} {paired.rpc.rps:>9,.0f} req/s  ratio {paired.ratio:.2f}")
            if rpc.label == rpcs.VALIDATE:
                _waiting_echo(pairing, section, workdir)
        section.notes += [
            f"ValidateHandle round robin over {options.handles} handles of a custom type "
            "(max_usage 1e9, rate_limit_per_handle 1e7); every validation is a store write.",
            "CPU µs/req: the server process's CPU time (all threads, /proc) over its runs / "
            "successful requests; steadier than req/s when neighbours take CPU.",
        ]
        sections = [section]
        if options.profile_seconds > 0:
            sections.append(_profile(server, prepared, token, options, workdir))
        return sections
    finally:
        server.stop()


def _waiting_echo(pairing: Pairing, section: Section, workdir: Path) -> None:
    """The reference beside ValidateHandle: the bare echo, made to wait as a durable
    answer waits for its commit. Waiting alone costs grpc.aio throughput (more calls open
    at once, each answered in a later turn of the loop), so this bounds what any
    validation that waits for a commit can reach on this stack."""
    label = f"echo waiting {COMMIT_WAIT_MS:g} ms (reference)"
    waiting = servers.start_baseline(
        "echo_server", workdir / "logs" / "echo-waiting.log", ("--wait-ms", str(COMMIT_WAIT_MS))
    )
    try:
        paired = pairing.measure(pairing.echo_call, waiting)
    finally:
        waiting.stop()
    section.rows.append(_row(label, paired, "—", None))
    section.data["echo_waiting"] = {"wait_ms": COMMIT_WAIT_MS, **paired.as_json()}
    section.notes.append(
        f"{label}: the bare echo server, each call awaiting a {COMMIT_WAIT_MS:g} ms timer "
        "before it answers, as a durable validation awaits its group commit; its ratio is "
        "what waiting alone leaves of echo's throughput on grpc.aio."
    )
    print(f"  {label:<24} {paired.rpc.rps:>9,.0f} req/s  ratio {paired.ratio:.2f}")


def _profile(
    server: servers.Server,
    prepared: fixtures.Fixtures,
    token: str,
    options: Options,
    workdir: Path,
) -> Section:
    section = Section(
        key="profile",
        name="profile",
        title=f"Where the time goes: py-spy (GIL holder) on the server under "
        f"ValidateHandle ({options.profile_seconds:g} s)",
        columns=["kind", "function", "share of samples"],
    )
    try:
        found = profile.sample(
            server,
            rpcs.validate(prepared.tokens, token).call,
            options.load,
            options.profile_seconds,
            workdir,
        )
    except profile.ProfileError as exc:
        section.notes.append(f"no profile: {exc}")
        return section
    section.data = found.as_json()
    for name, share in found.threads.items():
        section.rows.append(["thread", name, f"{share:.1%}"])
    for name, share in found.inclusive:
        section.rows.append(["inclusive", f"`{name}`", f"{share:.1%}"])
    for name, share in found.own:
        section.rows.append(["self", f"`{name}`", f"{share:.1%}"])
    section.notes += [
        f"{found.samples:,} samples at {profile.RATE} Hz of the thread holding the GIL "
        f"while ValidateHandle ran at {found.load.rps:,.0f} req/s: the GIL was held "
        f"{found.gil_busy:.0%} of the time.",
        "Compiled code is charged to the Python frame that called it: grpc's Cython core "
        "run from asyncio callbacks shows as `Handle._run`, SQLite as the `execute` "
        "callers (`SqlRepository._one` / `_all` / `_run` on the loop; BEGIN and COMMIT "
        "in the worker threads, under `SqliteStore._batches` / `_commit`).",
    ]
    return section
