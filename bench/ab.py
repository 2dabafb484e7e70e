"""Interleaved A/B of Keyturn servers built from several source trees (or one tree with
other flags or environment): ``python -m bench.ab``.

On a shared machine a change is only believable when its runs alternate with the runs
of what it changes, round after round, and when CPU per request agrees with req/s. Each
round runs every server once with ghz at 128 calls in flight (and, with ``--lone``, at
one call in flight), and prints req/s, p50, server CPU µs per request, validations per
commit (when the server reports commits) and the load average.

A tree is ``NAME=PATH[,VAR=value...][,ARGS=flags]``: the server runs from PATH's
``server/`` and ``clients/python/`` (ahead of this checkout's), e.g. a commit unpacked
with ``git archive <commit> | tar -x -C /tmp/old``::

    python -m bench.ab --tree old=/tmp/old --tree new=. --tree "native-off=.,KEYTURN_NATIVE=0"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import fixtures, ghz, rpcs
from bench.ghz import Call, Load
from bench.servers import Server, _env, _start, start_baseline
from keyturn import InvalidArgument
from keyturn.v1 import admin_pb2

_READY = re.compile(r"keyturn listening on (\S+:\d+)")


@dataclass
class Tree:
    name: str
    path: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    @staticmethod
    def parse(text: str) -> Tree:
        name, _, rest = text.partition("=")
        path, *settings = rest.split(",")
        pairs = dict(s.split("=", 1) for s in settings)
        args = pairs.pop("ARGS", "").split()
        return Tree(name, Path(path).resolve(), pairs, args)


def serve_tree(tree: Tree, workdir: Path, level: str, extra: tuple[str, ...] = ()) -> Server:
    """``tree``'s server on a fresh data directory: port 0, no per-caller limit (all the
    load comes from one caller), the tree's own flags and ``extra``."""
    data = workdir / tree.name
    env = _env({"MASTER_KEY": secrets.token_hex(32), "LOG_LEVEL": level, **tree.env})
    env["PYTHONPATH"] = f"{tree.path / 'server'}:{tree.path / 'clients' / 'python'}"
    argv = [
        sys.executable,
        "-m",
        "keyturn_server",
        "serve",
        "--data-dir",
        str(data),
        "--listen",
        "127.0.0.1:0",
        "--caller-rate-limit",
        "0",
        *extra,
        *tree.args,
    ]
    return _start(tree.name, argv, env, workdir / f"{tree.name}.log", _READY, 120)


async def _prepare(address: str, token: str, handles: int) -> fixtures.Fixtures:
    """The usual fixtures; older trees know fewer policy fields, so on a refusal the
    configuration lifts only the limits every version has."""
    try:
        return await fixtures.prepare(address, token, handles)
    except InvalidArgument:
        async with fixtures.admin_client(address, token) as client:
            current = await client.get_config()
            config = admin_pb2.Config()
            config.handle_types[fixtures.HANDLE_TYPE].algorithm = "sha256"
            kind = config.handle_types[fixtures.HANDLE_TYPE]
            kind.handle_length = fixtures.HANDLE_LENGTH
            kind.rotation_interval.FromTimedelta(fixtures.HANDLE_ROTATION)
            kind.warning_threshold.FromTimedelta(fixtures.HANDLE_WARNING)
            kind.max_lifetime.FromTimedelta(fixtures.HANDLE_LIFETIME)
            kind.max_usage = fixtures.MAX_USAGE
            config.security_policies.rate_limit_per_handle = fixtures.POLICY_LIMIT
            config.security_policies.max_concurrent_handles = fixtures.POLICY_LIMIT
            await client.update_config(
                config,
                etag=current.etag,
                update_mask=[
                    f"handle_types.{fixtures.HANDLE_TYPE}",
                    "security_policies.rate_limit_per_handle",
                    "security_policies.max_concurrent_handles",
                ],
                reason="benchmark setup",
            )
            pairs = await fixtures.generate_handles(client, handles)
            key = (await client.generate_key("encryption")).key.id
            ciphertext = (await client.encrypt(key, fixtures.PLAINTEXT)).ciphertext
            return fixtures.Fixtures([t for _, t in pairs], key, key, ciphertext)


async def _counters(address: str, token: str) -> tuple[int, int]:
    """(commits, validations); commits is 0 on servers that do not report it."""
    async with fixtures.admin_client(address, token) as client:
        health = await client.get_health("store")
        statistics_ = await client.get_handle_statistics()
        return health.health.components[0].store.commits, statistics_.statistics.validations


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH[,VAR=v][,ARGS=..]")
    p.add_argument("--rpc", default=rpcs.VALIDATE, help="the RPC label (bench/rpcs.py)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0, help="per run")
    p.add_argument("--lone", action="store_true", help="also one call in flight")
    p.add_argument("--echo", action="store_true", help="the echo baseline as one more tree")
    p.add_argument("--level", default="info", help="LOG_LEVEL of the servers (default info)")
    args = p.parse_args()
    ghz.ensure_ghz()
    workdir = Path(tempfile.mkdtemp(prefix="keyturn-ab-"))
    servers: dict[str, Server] = {}
    calls: dict[str, Call] = {}
    tokens: dict[str, str] = {}
    try:
        for tree in map(Tree.parse, args.tree):
            server = servers[tree.name] = serve_tree(tree, workdir, args.level)
            token = tokens[tree.name] = (workdir / tree.name / "admin.token").read_text().strip()
            prepared = asyncio.run(_prepare(server.address, token, 64))
            calls[tree.name] = {r.label: r.call for r in rpcs.per_rpc(prepared, token)}[args.rpc]
        if args.echo:
            servers["echo"] = start_baseline("echo_server", workdir / "echo.log")
            calls["echo"] = rpcs.echo("x" * 56)
        load = Load(16, 8, args.seconds, 0)
        for name, server in servers.items():
            ghz.run(calls[name], replace(load, seconds=1), server.address, workdir)
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        for round_ in range(args.rounds):
            for name, server in servers.items():
                average = os.getloadavg()[0]
                counted = name in tokens
                before_cpu = server.cpu_seconds()
                before = asyncio.run(_counters(server.address, tokens[name])) if counted else None
                result = ghz.run(calls[name], load, server.address, workdir)
                used = (server.cpu_seconds() - before_cpu) / max(result.ok, 1) * 1e6
                cpu[name].append(used)
                line = f"{result.rps:7.0f}/s p50 {result.p50_ms:6.1f} ms cpu {used:4.0f} µs"
                if before is not None:
                    after = asyncio.run(_counters(server.address, tokens[name]))
                    if after[0] > before[0]:
                        per = (after[1] - before[1]) / (after[0] - before[0])
                        line += f" {per:5.1f}/commit"
                if args.lone:
                    lone = ghz.run(
                        calls[name], Load(1, 1, args.seconds, 0), server.address, workdir
                    )
                    line += f" | one in flight p50 {lone.p50_ms:.2f} ms"
                print(f"round {round_} {name:>12}: {line}  (load {average:.2f})", flush=True)
                time.sleep(0.2)
        print()
        for name, values in cpu.items():
            print(f"{name:>12}: CPU µs/req median {statistics.median(values):.0f}")
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
