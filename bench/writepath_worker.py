"""One process of the write-path benchmark: a Keyturn worker (shared SQLite store) that
validates in process, without gRPC, as fast as 128 tasks can.

Prints ``ready`` once started, waits for a line on stdin, validates for ``--seconds``,
then prints one JSON line: validations, CPU seconds, commits and wall seconds.
Run by bench/writepath_suite.py: ``python -m bench.writepath_worker ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from keyturn_server.app import App
from keyturn_server.domain.access import Principal, Role
from keyturn_server.process.worker import WorkerRole
from keyturn_server.settings import Settings
from keyturn_server.store.sqlite import SqliteStore

TASKS = 128


async def main(args: argparse.Namespace, tokens: list[str]) -> None:
    role = WorkerRole(
        index=args.index,
        count=args.count,
        peers=Path(args.peers),
        supervisor=os.getppid(),
        ready_fd=-1,
        listen=("127.0.0.1:0",),
        http_listen=(),
    )
    settings = Settings(
        listen=role.listen,
        data_dir=Path(args.data_dir),
        master_key=os.environ["MASTER_KEY"],
        caller_rate_limit=0,
        worker=role,
    )
    app = App(settings)
    await app.start()
    try:
        assert app.services is not None and isinstance(app.store, SqliteStore)
        handles, store = app.services.handles, app.store
        caller = Principal("bench", Role.ADMIN, "token", "127.0.0.1")
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        done = 0
        commits = store.commits
        cpu, wall = time.process_time(), time.perf_counter()
        deadline = wall + args.seconds

        async def validate(start: int) -> None:
            nonlocal done
            i = start
            while time.perf_counter() < deadline:
                result = await handles.validate(caller, tokens[i % len(tokens)], {}, "")
                if not result.valid:
                    raise RuntimeError(f"a fixture handle did not validate: {result.reason}")
                done += 1
                i += 1

        await asyncio.gather(*(validate(i * 7 + args.index) for i in range(TASKS)))
        print(
            json.dumps(
                {
                    "validations": done,
                    "cpu_seconds": time.process_time() - cpu,
                    "wall_seconds": time.perf_counter() - wall,
                    "commits": store.commits - commits,
                }
            ),
            flush=True,
        )
    finally:
        await app.stop()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.writepath_worker")
    for name in ("--data-dir", "--peers", "--tokens"):
        p.add_argument(name, required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse()
    asyncio.run(main(arguments, Path(arguments.tokens).read_text().split()))
