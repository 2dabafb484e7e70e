"""Keyturn's own cost per validation, with gRPC taken out.

A real server (App, SQLite store, keyring) runs in this process; 128 tasks call
``HandleService.validate`` directly, round robin over the fixture handles, and the
process CPU time (every thread: the loop and the commit thread) is divided by the
validations. The baseline, alternated with it: the same tasks each awaiting a bare
unit of work on the same store (``store.write`` of one small row), which is what
durability costs by itself through group commit. The ratio shows how much of a validation is the
rule and the lookup rather than the commit.

Beside the gRPC figures this separates the two halves of ValidateHandle's cost: what
Keyturn's Python does (here), and what grpc.aio adds around it (the rpc suite).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench import fixtures
from bench.options import Options
from bench.report import Section, num, ratio
from keyturn_server.app import App
from keyturn_server.domain.access import Principal, Role
from keyturn_server.settings import Settings

TASKS = 128


@dataclass(frozen=True)
class Measured:
    operations: int
    cpu_seconds: float
    wall_seconds: float

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds * 1e6 / self.operations

    @property
    def per_second(self) -> float:
        return self.operations / self.wall_seconds


async def _drive(count: int, operation: Callable[[int], Awaitable[None]]) -> Measured:
    done = 0

    async def worker(start: int) -> None:
        nonlocal done
        i = start
        while done < count:
            done += 1
            await operation(i)
            i += 1

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(TASKS)))
    return Measured(done, time.process_time() - cpu, time.perf_counter() - wall)


def _total(runs: list[Measured]) -> Measured:
    return Measured(
        sum(r.operations for r in runs),
        sum(r.cpu_seconds for r in runs),
        sum(r.wall_seconds for r in runs),
    )


async def _measure(options: Options, data_dir: Path) -> tuple[Measured, Measured]:
    app = App(
        Settings(
            listen=("127.0.0.1:0",),
            data_dir=data_dir,
            master_key=secrets.token_hex(32),
            caller_rate_limit=0,
        )
    )
    await app.start()
    try:
        assert app.admin_token is not None and app.services is not None
        prepared = await fixtures.prepare(app.address, app.admin_token, options.handles)
        handles, store = app.services.handles, app.store
        caller = Principal("bench", Role.ADMIN, "token", "127.0.0.1")
        tokens = list(prepared.tokens)

        async def validate(i: int) -> None:
            result = await handles.validate(caller, tokens[i % len(tokens)], {}, "")
            if not result.valid:
                raise RuntimeError(f"a fixture handle did not validate: {result.reason}")

        async def bare_write(i: int) -> None:
            await store.write(lambda repo: repo.set_meta("bench.inprocess", b"%d" % i))

        count = 2_000 if options.mode == "quick" else 20_000
        await _drive(count // 4, validate)  # warm-up: caches, statements, allocator
        validations, writes = [], []
        for _ in range(max(1, options.rounds // 2)):
            writes.append(await _drive(count, bare_write))
            validations.append(await _drive(count, validate))
        return _total(validations), _total(writes)
    finally:
        await app.stop()


def run(options: Options, workdir: Path) -> list[Section]:
    data_dir = workdir / "inprocess-data"
    try:
        validations, writes = asyncio.run(_measure(options, data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    section = Section(
        key="inprocess",
        name="in-process",
        title="In process, no gRPC: HandleService.validate vs a bare durable write",
        columns=[
            "work",
            "per s",
            "CPU µs/op",
            "bare write per s",
            "bare write CPU µs/op",
            "CPU ratio",
        ],
    )
    section.rows.append(
        [
            "validate (rule, lookup, counted use)",
            num(validations.per_second),
            num(validations.cpu_us),
            num(writes.per_second),
            num(writes.cpu_us),
            ratio(validations.cpu_us / writes.cpu_us),
        ]
    )
    section.data = {
        "tasks": TASKS,
        "validations": validations.operations,
        "validate_cpu_us": round(validations.cpu_us, 1),
        "validate_per_second": round(validations.per_second),
        "bare_write_cpu_us": round(writes.cpu_us, 1),
        "bare_write_per_second": round(writes.per_second),
    }
    section.notes += [
        f"{TASKS} tasks in this process call the domain directly (a real App on a SQLite "
        "store, no gRPC); CPU is the process's (all threads) over the operations.",
        "A bare write is `store.write` of a unit that upserts one small row: a "
        "group-committed transaction, the floor of any durable answer.",
    ]
    print(
        f"  validate in-process        {validations.per_second:>9,.0f} /s  "
        f"{validations.cpu_us:,.0f} µs CPU (bare write {writes.cpu_us:,.0f} µs)"
    )
    return [section]
