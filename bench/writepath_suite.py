"""How the shared SQLite write path scales with processes: 1, 2, 4, 8 processes
validating in process (no gRPC, 128 tasks each) against one database, as the workers of
``--workers N`` do. Each validation is a durable, counted use; the processes serialise on
SQLite's write lock, and each groups its validations into commits.

It shows where a bigger host saturates: on two cores, more processes than cores can only
show what contention for the lock costs, not more throughput.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import fixtures
from bench.options import Options
from bench.report import Section, num
from bench.servers import REPO
from keyturn_server.app import App
from keyturn_server.settings import Settings

STARTUP = 120.0


async def _prepare(data_dir: Path, master_key: str, handles: int) -> list[str]:
    app = App(
        Settings(
            listen=("127.0.0.1:0",), data_dir=data_dir, master_key=master_key, caller_rate_limit=0
        )
    )
    await app.start()
    try:
        assert app.admin_token is not None
        return list((await fixtures.prepare(app.address, app.admin_token, handles)).tokens)
    finally:
        await app.stop()


def _run(
    count: int, data_dir: Path, tokens: Path, master_key: str, seconds: float
) -> dict[str, float]:
    peers = Path(tempfile.mkdtemp(prefix="keyturn-writepath-"))
    env = {**os.environ, "MASTER_KEY": master_key, "LOG_LEVEL": "warning"}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.writepath_worker",
                "--data-dir",
                str(data_dir),
                "--peers",
                str(peers),
                "--tokens",
                str(tokens),
                "--index",
                str(i),
                "--count",
                str(count),
                "--seconds",
                str(seconds),
            ],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a write-path process did not start")
        for process in processes:  # all at once: they start validating together
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        found = []
        for process in processes:
            assert process.stdout is not None
            found.append(json.loads(process.stdout.readline()))
            process.wait(STARTUP)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        shutil.rmtree(peers, ignore_errors=True)
    validations = sum(f["validations"] for f in found)
    wall = max(f["wall_seconds"] for f in found)
    commits = sum(f["commits"] for f in found)
    return {
        "processes": count,
        "validations": validations,
        "per_second": validations / wall,
        "cpu_us": sum(f["cpu_seconds"] for f in found) / validations * 1e6,
        "per_commit": validations / commits if commits else float("nan"),
    }


def run(options: Options, workdir: Path) -> list[Section]:
    data_dir = workdir / "writepath-data"
    master_key = secrets.token_hex(32)
    tokens = workdir / "writepath-tokens.txt"
    tokens.write_text("\n".join(asyncio.run(_prepare(data_dir, master_key, options.handles))))
    seconds = 1.5 if options.mode == "quick" else 4.0
    section = Section(
        key="writepath",
        name="write path",
        title=f"Shared SQLite write path: validations in process by N processes on one "
        f"database ({seconds:g} s each)",
        columns=[
            "processes",
            "validations/s",
            "per process",
            "CPU µs/validation",
            "validations/commit",
        ],
    )
    for count in options.write_processes:
        found = _run(count, data_dir, tokens, master_key, seconds)
        section.rows.append(
            [
                str(count),
                num(found["per_second"]),
                num(found["per_second"] / count),
                num(found["cpu_us"]),
                num(found["per_commit"], 1),
            ]
        )
        section.data[str(count)] = {k: round(v, 2) for k, v in found.items()}
        print(f"  {count} process(es)               {found['per_second']:>9,.0f} validations/s")
        time.sleep(0.5)
    section.notes += [
        f"Each process: a worker App on the shared store, 128 tasks calling "
        f"HandleService.validate round robin over {options.handles} handles; no gRPC.",
        f"This machine has {os.cpu_count()} cores: beyond that, processes share them, and "
        "the figure shows the cost of contention for SQLite's write lock, not capacity.",
    ]
    shutil.rmtree(data_dir, ignore_errors=True)
    return [section]
