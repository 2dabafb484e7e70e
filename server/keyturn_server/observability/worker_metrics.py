"""``--metrics-listen`` with ``--workers N``: one scrape, the figures of every worker.

Each worker keeps its own figures (requests it served, its latencies, its subscribers)
and reads the same store. It answers its exposition on its figures socket
(``process/figures.py``); the supervisor serves ``--metrics-listen`` and, at each
scrape, reads every worker's and merges them, family by family:

- what each worker counts for itself (RPCs and their latencies, rows that failed their
  MAC on its reads, its open streams) is **summed**;
- what every worker reads from the one store, or hears of from the others (keys and
  handles by status, deadlines, events and anomalies, the scheduler), is the same figure
  seen N times: the **highest** is served (the leader's for ``keyturn_scheduler_leader``),
  and for ``keyturn_store_up`` the **lowest** (one worker that cannot write is news);
- a counter summed over workers must not go back when one of them is replaced: the last
  figures the supervisor read from a worker that ended are carried into the sums, as
  Prometheus's own multi-process mode keeps a dead process's counters.

A worker that does not answer within ``figures.TIMEOUT`` is left out of that scrape (its
counters carried from its last answer). ``keyturn_metrics_workers`` says how many
answered.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from keyturn_server.process import figures

#: What each worker counts for itself: summed.
SUMMED = frozenset(
    {
        "keyturn_rpc_requests",
        "keyturn_rpc_duration_seconds",
        "keyturn_tampered_rows",
        "keyturn_audit_verifications",
        "keyturn_watch_subscribers",
    }
)
#: Of those, the counters: a replaced worker's last figures stay in the sums.
CARRIED = SUMMED - {"keyturn_watch_subscribers"}
LOWEST = frozenset({"keyturn_store_up"})
#: First line of a worker's answer: who answers. Random per worker process (a pid may come
#: back: a replacement with its predecessor's pid must not be taken for it).
_WHO = "# keyturn worker "

SampleKey = tuple[str, tuple[tuple[str, str], ...]]
#: Samples of the carried families, by family.
Counts = dict[str, dict[SampleKey, float]]


def render(registry: CollectorRegistry) -> Callable[[], bytes]:
    """A worker's answer to ``metrics``: who answers, then its exposition."""
    who = f"{_WHO}{secrets.token_hex(8)}\n".encode()
    return lambda: who + generate_latest(registry)


@dataclass
class _Seen:
    who: str = ""
    #: The carried families' samples of its last answer.
    counters: Counts = field(default_factory=dict)


class WorkersCollector(Collector):
    """Merges the workers' expositions at each scrape (run in the metrics server's
    thread)."""

    def __init__(self, paths: Callable[[], list[Path]]) -> None:
        self._paths = paths
        self._seen: dict[Path, _Seen] = {}
        #: Counters of workers that ended.
        self._retired: Counts = {}
        #: Scrapes run in threads of their own, and two at once are usual (Prometheus in
        #: pairs): each would otherwise carry a replaced worker's counts into the sums.
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            merged = list(self._collect())
        yield from merged

    def _collect(self) -> Iterator[Metric]:
        answers: list[list[Metric]] = []
        stale: list[Counts] = []
        for path in self._paths():
            seen = self._seen.setdefault(path, _Seen())
            fetched = _fetch(path)
            if fetched is None:
                stale.append(seen.counters)
                continue
            who, families = fetched
            counters = {f.name: dict(_samples(f)) for f in families if f.name in CARRIED}
            if seen.who and who != seen.who:  # replaced: keep what its predecessor counted
                _add(self._retired, seen.counters)
            seen.who, seen.counters = who, counters
            answers.append(families)
        yield from _merge(answers, [self._retired, *stale])
        workers = GaugeMetricFamily(
            "keyturn_metrics_workers", "Workers whose figures this scrape includes"
        )
        workers.add_metric([], len(answers))
        yield workers


def _fetch(path: Path) -> tuple[str, list[Metric]] | None:
    answer = figures.fetch(path, "metrics")
    if answer is None:
        return None
    first, _, body = answer.decode().partition("\n")
    if not first.startswith(_WHO):
        return None
    return first[len(_WHO) :], list(text_string_to_metric_families(body))


def _samples(family: Metric) -> Iterator[tuple[SampleKey, float]]:
    for sample in family.samples:
        yield (sample.name, tuple(sorted(sample.labels.items()))), sample.value


def _add(into: Counts, more: Counts) -> None:
    for name, samples in more.items():
        target = into.setdefault(name, {})
        for key, value in samples.items():
            target[key] = target.get(key, 0.0) + value


def _merge(answers: list[list[Metric]], carried: list[Counts]) -> Iterator[Metric]:
    merged: dict[str, Metric] = {}
    values: dict[str, dict[SampleKey, float]] = {}
    for families in answers:
        for family in families:
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            into = values[family.name]
            pick = _policy(family.name)
            for key, value in _samples(family):
                into[key] = value if key not in into else pick(into[key], value)
    for extra in carried:
        for name, samples in extra.items():
            if name not in values:  # no worker answered with its type and help
                continue
            summed = values[name]
            for key, value in samples.items():
                summed[key] = summed.get(key, 0.0) + value
    for name, family in merged.items():
        for (sample, labels), value in values[name].items():
            family.add_sample(sample, dict(labels), value)
        yield family


def _policy(name: str) -> Callable[[float, float], float]:
    if name.endswith("_created"):
        return min
    if name in SUMMED:
        return _sum
    if name in LOWEST:
        return min
    return max


def _sum(a: float, b: float) -> float:
    return a + b


def serve_supervisor(host: str, port: int, paths: Callable[[], list[Path]]) -> Any:
    """Serve the merged figures on ``host:port``; the server (``.server_port``)."""
    registry = CollectorRegistry()
    registry.register(WorkersCollector(paths))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
