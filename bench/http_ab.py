"""Interleaved A/B of Keyturn's HTTP/JSON ValidateHandle routes across source trees:
``python -m bench.http_ab``.

``bench.ab`` does this for gRPC with ghz; this one drives h2load --h1 against
``/v1/handles:validate`` and ``/api/key-management/handles/validate`` of each tree's
server (and the bare aiohttp endpoint with ``--bare``), one run each per round, and
prints server CPU µs per request, which a busy shared machine disturbs far less than
req/s. ``--profile ROUTE`` also samples that route of the last tree with py-spy (--gil)
and prints the functions that hold the most samples.

    python -m bench.http_ab --tree old=/tmp/old --tree new=. --bare
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from bench import profile
from bench.ab import Tree, serve_tree
from bench.ghz import Load
from bench.h2load import HttpResult, ensure_h2load, post
from bench.http_suite import ROUTES, _handle
from bench.servers import Server, start_baseline

_READY = r"keyturn HTTP/JSON on (http://\S+)"


def _serve(tree: Tree, workdir: Path) -> tuple[Server, str]:
    """``tree``'s server as bench.ab starts it, with an HTTP listener; its base URL."""
    server = serve_tree(tree, workdir, "info", ("--http-listen", "127.0.0.1:0"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(_READY, server.log_path.read_text(errors="replace"))
        if found:
            return server, found.group(1)
        time.sleep(0.05)
    raise RuntimeError(f"{tree.name}: no HTTP listener")


def _sample(server: Server, url: str, body: Path, headers: dict[str, str], load: Load) -> str:
    """py-spy's folded stacks of ``server`` while h2load posts to ``url``."""
    out = Path(tempfile.mkdtemp(prefix="keyturn-spy-")) / "raw.txt"
    return profile.record(server, load.seconds, out, lambda: post(url, body, headers, load))


def _top(raw: str, count: int = 30) -> list[tuple[str, float, float]]:
    """(function, inclusive share, own share), most inclusive first."""
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, n in profile.stacks(raw):
        total += n
        own[stack[-1]] += n
        for frame in set(stack):
            inclusive[frame] += n
    return [(name, c / total, own[name] / total) for name, c in inclusive.most_common(count)]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.http_ab", description=__doc__.split("\n")[0])
    p.add_argument("--tree", action="append", required=True, help="NAME=PATH[,VAR=v][,ARGS=..]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="per run")
    p.add_argument("--connections", type=int, default=128)
    p.add_argument("--bare", action="store_true", help="the bare aiohttp endpoint too")
    p.add_argument("--route", choices=["v1", "compat", "both"], default="both")
    p.add_argument("--profile", choices=["v1", "compat"], help="py-spy the last tree")
    p.add_argument("--raw", type=Path, help="with --profile: keep py-spy's folded stacks here")
    args = p.parse_args()
    ensure_h2load()
    workdir = Path(tempfile.mkdtemp(prefix="keyturn-http-ab-"))
    load = Load(connections=args.connections, streams=1, seconds=args.seconds, warmup=0.0)
    labels = list(ROUTES)
    picked = {"v1": labels[:1], "compat": labels[1:], "both": labels}[args.route]
    servers: dict[str, Server] = {}
    targets: list[tuple[str, Server, str, Path, dict[str, str]]] = []
    try:
        if args.bare:
            bare = servers["bare"] = start_baseline("http_echo_server", workdir / "bare.log")
            body = workdir / "bare.json"
            body.write_text(json.dumps({"token": "x" * 40}))
            targets.append(("bare", bare, f"http://{bare.address}/validate", body, {}))
        for tree in map(Tree.parse, args.tree):
            server, base = _serve(tree, workdir)
            servers[tree.name] = server
            token = (workdir / tree.name / "admin.token").read_text().strip()
            _, handle_token = asyncio.run(_handle(server.address, token))
            headers = {"authorization": f"Bearer {token}"}
            for label in picked:
                path, field = ROUTES[label]
                body = workdir / f"{tree.name}-{field}.json"
                body.write_text(json.dumps({field: handle_token}))
                name = f"{tree.name} {path.rsplit('/', 2)[-2]}"
                targets.append((name, server, base + path, body, headers))
        warm = replace(load, seconds=0.5)
        for _, _, url, body, headers in targets:
            post(url, body, headers, warm)
        cpu: dict[str, list[float]] = {t[0]: [] for t in targets}
        rps: dict[str, list[float]] = {t[0]: [] for t in targets}
        for round_ in range(args.rounds):
            for name, server, url, body, headers in targets:
                before = server.cpu_seconds()
                result: HttpResult = post(url, body, headers, load)
                used = server.cpu_seconds() - before
                if result.errors:
                    print(f"  {name}: {result.errors} errors {result.codes}", flush=True)
                cpu[name].append(used / max(1, result.ok) * 1e6)
                rps[name].append(result.rps)
                time.sleep(0.2)
            print(f"round {round_ + 1}: load average {os.getloadavg()[0]:.2f}", flush=True)
        bare_rps = statistics.median(rps["bare"]) if "bare" in rps else 0.0
        print(f"\n{'run':<28}{'CPU µs/req':>12}{'(min)':>8}{'req/s':>10}{'ratio':>8}")
        for name in cpu:
            median_rps = statistics.median(rps[name])
            share = f"{median_rps / bare_rps:.2f}x" if bare_rps else ""
            print(
                f"{name:<28}{statistics.median(cpu[name]):>12.0f}{min(cpu[name]):>8.0f}"
                f"{median_rps:>10.0f}{share:>8}"
            )
        if args.profile:
            label = labels[0] if args.profile == "v1" else labels[1]
            suffix = ROUTES[label][0].rsplit("/", 2)[-2]
            name, server, url, body, headers = [t for t in targets if t[0].endswith(suffix)][-1]
            raw = _sample(server, url, body, headers, replace(load, seconds=8))
            if args.raw:
                args.raw.write_text(raw)
            print(f"\npy-spy --gil, {name}: inclusive / own share of samples")
            for function, inclusive, own in _top(raw, 45):
                print(f"{inclusive:6.1%} {own:6.1%}  {function[:110]}")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
