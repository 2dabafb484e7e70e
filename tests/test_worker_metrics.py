"""How the figures of --workers are combined: the supervisor merges its workers' metrics
family by family (real worker registries answering on Unix sockets, collected as a scrape
collects them), and a worker answering a statistics call adds its siblings' counts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from keyturn_server.domain.statistics import Statistics
from keyturn_server.observability.metrics import Metrics
from keyturn_server.observability.worker_metrics import WorkersCollector, render
from keyturn_server.process import figures

Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def serve_worker(metrics: Metrics, path: Path) -> asyncio.AbstractServer:
    """A worker's figures socket, as a worker of --workers serves it."""
    return await figures.serve(path, {"metrics": render(metrics.registry)})


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
    servers = [await serve_worker(m, p) for m, p in zip((first, second), paths, strict=True)]
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
    server = await serve_worker(metrics, path)
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
    server = await serve_worker(again, path)
    try:
        assert (await collect(collector))[encrypt] == 2
    finally:
        server.close()


async def test_a_statistics_call_counts_every_workers_calls(tmp_path: Path) -> None:
    """Each worker counts the calls it served; the one that answers a statistics call
    adds its siblings' counts and pools their latencies. A sibling that does not answer
    is left out, not waited for."""
    workers = [Statistics() for _ in range(3)]
    for index, stats in enumerate(workers):
        for n in range(index + 1):
            stats.observe("validate", 0.001 * (index + 1))
            stats.validations += 1
            stats.failures_by_reason["EXPIRED"] += n % 2
        stats.requests["keyturn.v1.HandleService"] += 10
    servers = []
    for index in (1, 2):
        siblings = figures.Siblings(tmp_path, 3, index, workers[index])
        servers.append(
            await figures.serve(figures.socket_path(tmp_path, index), siblings.answers())
        )
    try:
        combined = await figures.Siblings(tmp_path, 3, 0, workers[0]).statistics()
        assert combined.validations == 1 + 2 + 3
        assert combined.failures_by_reason["EXPIRED"] == 0 + 1 + 1
        assert combined.requests["keyturn.v1.HandleService"] == 30
        summary = combined.summary("validate")
        assert summary.count == 6 and summary.max.total_seconds() == 0.003
        servers.pop().close()  # worker 2 is gone
        assert (await figures.Siblings(tmp_path, 3, 0, workers[0]).statistics()).validations == 3
    finally:
        for server in servers:
            server.close()


async def test_statistics_calls_in_a_burst_ask_the_siblings_once(tmp_path: Path) -> None:
    """A flood of statistics calls to one worker must not become one to every worker."""
    asked = 0
    sibling = Statistics()

    def answer() -> bytes:
        nonlocal asked
        asked += 1
        return json.dumps(sibling.snapshot()).encode()

    server = await figures.serve(figures.socket_path(tmp_path, 1), {"statistics": answer})
    try:
        mine = figures.Siblings(tmp_path, 2, 0, Statistics())
        await asyncio.gather(*(mine.statistics() for _ in range(50)))
        await mine.statistics()
        assert asked == 1
        mine.REUSE_FOR = 0.0
        await asyncio.sleep(0.01)
        await mine.statistics()
        assert asked == 2
    finally:
        server.close()
