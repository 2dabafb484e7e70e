"""How the supervisor of --workers merges its workers' metrics, family by family: two
real worker registries answering on Unix sockets, collected as a scrape collects them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from keyturn_server.observability.metrics import Metrics
from keyturn_server.observability.worker_metrics import WorkersCollector, serve_worker

Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def collect(collector: WorkersCollector) -> Figures:
    families = await asyncio.to_thread(lambda: list(collector.collect()))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


async def test_own_counts_are_summed_the_stores_figures_served_once(tmp_path: Path) -> None:
    first, second = Metrics(), Metrics()
    first.observe_rpc("/keyturn.v1.KeyService/Encrypt", "OK", 0.001)
    for _ in range(2):
        second.observe_rpc("/keyturn.v1.KeyService/Encrypt", "OK", 0.002)
    first.subscribers.set(3)
    second.subscribers.set(4)
    # Both read the one store: 5 keys, seen by each.
    for metrics in (first, second):
        metrics._state.snapshot = {"keys": [("api", "ACTIVE", 5, 0, 0)]}
    first.leader.set(0)
    second.leader.set(1)
    first.store_up.set(1)
    second.store_up.set(0)
    paths = [tmp_path / "0.sock", tmp_path / "1.sock"]
    servers = [
        await serve_worker(m.registry, p) for m, p in zip((first, second), paths, strict=True)
    ]
    try:
        figures = await collect(WorkersCollector(lambda: paths))
    finally:
        for server in servers:
            server.close()
    encrypt = (("code", "OK"), ("method", "/keyturn.v1.KeyService/Encrypt"))
    assert figures[("keyturn_rpc_requests_total", encrypt)] == 3
    latency = (("method", "/keyturn.v1.KeyService/Encrypt"),)
    assert figures[("keyturn_rpc_duration_seconds_count", latency)] == 3
    assert figures[("keyturn_rpc_duration_seconds_sum", latency)] == 0.005
    assert figures[("keyturn_watch_subscribers", ())] == 7
    assert figures[("keyturn_keys", (("status", "ACTIVE"), ("type", "api")))] == 5
    assert figures[("keyturn_scheduler_leader", ())] == 1
    assert figures[("keyturn_store_up", ())] == 0  # one worker that cannot write is news
    assert figures[("keyturn_metrics_workers", ())] == 2


async def test_a_worker_that_does_not_answer_is_left_out_but_its_counts_are_not(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    metrics.observe_rpc("/keyturn.v1.KeyService/Encrypt", "OK", 0.001)
    path = tmp_path / "0.sock"
    collector = WorkersCollector(lambda: [path])
    server = await serve_worker(metrics.registry, path)
    encrypt = (
        "keyturn_rpc_requests_total",
        (("code", "OK"), ("method", "/keyturn.v1.KeyService/Encrypt")),
    )
    assert (await collect(collector))[encrypt] == 1
    server.close()
    await server.wait_closed()
    silent = await collect(collector)
    assert silent[("keyturn_metrics_workers", ())] == 0
    again = Metrics()  # its successor
    again.observe_rpc("/keyturn.v1.KeyService/Encrypt", "OK", 0.001)
    server = await serve_worker(again.registry, path)
    try:
        assert (await collect(collector))[encrypt] == 2
    finally:
        server.close()
