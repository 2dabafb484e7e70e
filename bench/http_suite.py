"""ValidateHandle over HTTP/1.1 JSON, through /v1 (the transcoder) and through the
specification's /api/key-management route, against a bare JSON endpoint on the same HTTP
stack (aiohttp's low-level server, bench/http_echo_server.py), alternated round by round
in the same run. Every validation is durable (SQLite, synchronous FULL) and counted: after
the timed rounds the suite sends an exact number of validations per route and checks that
the handle's usage grew by exactly the 2xx answers h2load saw."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import statistics
import time
from dataclasses import replace
from pathlib import Path

from bench import fixtures, servers
from bench.h2load import HttpResult, post
from bench.options import Options
from bench.report import Section, num, ratio, verdict

TARGET = 0.60
#: Validations per route in the exact usage check.
COUNTED = 2000
_HTTP_READY = re.compile(r"keyturn HTTP/JSON on (http://\S+)")
ROUTES = {
    "ValidateHandle /v1": ("/v1/handles:validate", "token"),
    "ValidateHandle /api/key-management": ("/api/key-management/handles/validate", "handleId"),
}


def _http_address(server: servers.Server) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _HTTP_READY.search(server.log_path.read_text(errors="replace"))
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise servers.ServerError("the HTTP listener did not start")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def _usage(address: str, token: str, handle_id: str) -> int:
    async with fixtures.admin_client(address, token) as client:
        return int((await client.get_handle(handle_id)).usage_count)


def run(options: Options, workdir: Path) -> list[Section]:
    load = options.load
    bare = servers.start_baseline("http_echo_server", workdir / "logs" / "http-echo.log")
    data_dir = workdir / "http-data"
    keyturn = servers.start_keyturn(
        data_dir,
        secrets.token_hex(32),
        workdir / "logs" / "http.log",
        extra_args=("--http-listen", "127.0.0.1:0"),
    )
    try:
        base = _http_address(keyturn)
        admin = servers.admin_token(data_dir)
        handle_id, token = asyncio.run(_handle(keyturn.address, admin))
        bodies = {}
        for label, (_, field) in ROUTES.items():
            bodies[label] = workdir / f"http-{field}.json"
            bodies[label].write_text(json.dumps({field: token}))
        headers = {"authorization": f"Bearer {admin}"}
        bare_url = f"http://{bare.address}/validate"
        share = replace(load, seconds=load.seconds / options.rounds)
        warm = replace(load, seconds=max(load.warmup, 0.2))
        for label, (path, _) in ROUTES.items():
            post(base + path, bodies[label], headers, warm)
        post(bare_url, bodies["ValidateHandle /v1"], headers, warm)
        results: dict[str, list[HttpResult]] = {"bare": [], **{label: [] for label in ROUTES}}
        cpu = {label: 0.0 for label in results}
        for _ in range(options.rounds):
            for label, server, url, body in [
                ("bare", bare, bare_url, bodies["ValidateHandle /v1"]),
                *[
                    (label, keyturn, base + path, bodies[label])
                    for label, (path, _) in ROUTES.items()
                ],
            ]:
                before = server.cpu_seconds()
                result = post(url, body, headers, share)
                cpu[label] += server.cpu_seconds() - before
                results[label].append(result)
                time.sleep(0.2)
        time.sleep(0.5)  # what the timed runs left in flight
        before = asyncio.run(_usage(keyturn.address, admin, handle_id))
        validated = sum(
            post(base + path, bodies[label], headers, load, count=COUNTED).ok
            for label, (path, _) in ROUTES.items()
        )
        usage = asyncio.run(_usage(keyturn.address, admin, handle_id)) - before
        return [_section(options, results, cpu, usage, validated)]
    finally:
        keyturn.stop()
        bare.stop()


async def _handle(address: str, admin: str) -> tuple[str, str]:
    """The bench configuration and one handle of its type: (handle id, token)."""
    async with fixtures.admin_client(address, admin) as client:
        await fixtures.configure(client)
        ((handle_id, token),) = await fixtures.generate_handles(client, 1)
        return handle_id, token


def _section(
    options: Options,
    results: dict[str, list[HttpResult]],
    cpu: dict[str, float],
    usage: int,
    validated: int,
) -> Section:
    section = Section(
        key="http",
        name="HTTP/JSON",
        title=(
            f"HTTP/1.1 JSON, h2load --h1 ({options.load.concurrency} connections, "
            f"{options.load.seconds:g} s per route in {options.rounds} round(s))"
        ),
        columns=[
            "route",
            "req/s",
            "mean ms",
            "errors",
            "bare req/s",
            "ratio to bare",
            "CPU µs/req",
            "target",
            "verdict",
        ],
    )
    bare_rps = [r.rps for r in results["bare"]]
    bare_ok = sum(r.ok for r in results["bare"])
    bare_cpu = cpu["bare"] / bare_ok * 1e6 if bare_ok else float("nan")
    section.rows.append(
        [
            "bare JSON endpoint (aiohttp)",
            num(_median(bare_rps)),
            num(_median([r.mean_ms for r in results["bare"]]), 1),
            num(sum(r.errors for r in results["bare"])),
            "",
            "",
            num(bare_cpu),
            "",
            "",
        ]
    )
    section.data["bare"] = [r.as_json() for r in results["bare"]]
    for label in ROUTES:
        runs = results[label]
        ratios = [r.rps / b for r, b in zip(runs, bare_rps, strict=True) if b]
        value = _median(ratios)
        met = value >= TARGET
        ok = sum(r.ok for r in runs)
        section.rows.append(
            [
                label,
                num(_median([r.rps for r in runs])),
                num(_median([r.mean_ms for r in runs]), 1),
                num(sum(r.errors for r in runs)),
                num(_median(bare_rps)),
                ratio(value),
                num(cpu[label] / ok * 1e6 if ok else float("nan")),
                f">= {TARGET:.2f}x bare",
                verdict(met),
            ]
        )
        section.targets.append((f"{label} >= {TARGET:.2f}x the bare endpoint", met))
        section.data[label] = {
            "runs": [r.as_json() for r in runs],
            "ratio_to_bare": round(value, 4),
            "rounds": [round(x, 4) for x in ratios],
        }
    durable = usage == validated
    section.targets.append(("every 2xx validation counted in the handle's usage", durable))
    section.data["usage"] = {"counted": usage, "validated_2xx": validated}
    section.notes.append(
        f"Usage counted: {usage:,} of {validated:,} successful validations in the exact run "
        f"({COUNTED:,} per route). h2load sends one body, so every request validates the same "
        "handle (the gRPC suite round-robins 64)."
    )
    return section
