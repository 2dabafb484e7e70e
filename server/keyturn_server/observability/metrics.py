"""Prometheus metrics on --metrics-listen: RPCs by method and code, keys and handles by
type and status, rotations, anomalies, the scheduler (oldest overdue deadline, leader,
lease epoch), whether the store is up, and the earliest key expiry and rotation by type.

The listener answers without a token, so by default nothing names a resource: per-key
gauges labelled with key ids are exported only with --metrics-per-resource (they also
grow with the number of keys, which Prometheus pays for in series)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sized
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from keyturn_server.clock import Clock
from keyturn_server.domain.errors import Unavailable
from keyturn_server.domain.events import Event, EventKind
from keyturn_server.domain.lifecycle import Scheduler
from keyturn_server.domain.repositories import Repository, Store

log = logging.getLogger("keyturn.metrics")
REFRESH_SECONDS = 15.0
#: The scheduler's and the store's gauges are cheap: refreshed more often.
SCHEDULER_SECONDS = 5.0


class Metrics:
    def __init__(self, *, per_resource: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "keyturn_rpc_requests", "RPCs served", ["method", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "keyturn_rpc_duration_seconds",
            "RPC latency",
            ["method"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.events = Counter(
            "keyturn_events", "Events committed", ["subject", "kind"], registry=self.registry
        )
        self.anomalies = Counter(
            "keyturn_anomalies", "Anomalies detected", ["kind"], registry=self.registry
        )
        self.lag = Gauge(
            "keyturn_scheduler_lag_seconds",
            "Age of the oldest overdue deadline (same as keyturn_scheduler_oldest_overdue_seconds)",
            registry=self.registry,
        )
        self.oldest_overdue = Gauge(
            "keyturn_scheduler_oldest_overdue_seconds",
            "Age of the oldest deadline due and not acted on, read from the store: the same "
            "on every replica, growing while no replica schedules",
            registry=self.registry,
        )
        self.leader = Gauge(
            "keyturn_scheduler_leader",
            "1 while this replica holds the scheduler lease (exactly one replica should)",
            registry=self.registry,
        )
        self.lease_epoch = Gauge(
            "keyturn_scheduler_lease_epoch",
            "The scheduler lease's epoch as stored: it rises by one at every takeover",
            registry=self.registry,
        )
        self.store_up = Gauge(
            "keyturn_store_up",
            "1 while the store can be reached and written, else 0",
            registry=self.registry,
        )
        self.subscribers = Gauge(
            "keyturn_watch_subscribers", "Open WatchExpiring streams", registry=self.registry
        )
        self.tampered = Counter(
            "keyturn_tampered_rows",
            "Reads that met a stored row whose MAC failed (altered outside Keyturn), by table",
            ["table"],
            registry=self.registry,
        )
        self.audit_verifications = Counter(
            "keyturn_audit_verifications",
            "Verifications of the audit log by result: broken means entries were altered, "
            "removed or forged outside Keyturn",
            ["result"],
            registry=self.registry,
        )
        for result in ("intact", "broken"):  # both series exist from the start, at 0
            self.audit_verifications.labels(result)
        self._state = _StateCollector(per_resource)
        self.registry.register(self._state)
        self._server: Any = None
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def watch_certificate(self, not_after: Callable[[], float]) -> None:
        """Export when the served TLS certificate expires (read at each scrape), so that an
        alert fires when a renewal did not arrive, not when handshakes start failing."""
        Gauge(
            "keyturn_tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate served to new connections expires (Unix time)",
            registry=self.registry,
        ).set_function(not_after)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        # The labelled children, looked up once: labels() validates and locks per call.
        children = self._rpc_children.get((method, code))
        if children is None:
            children = self._rpc_children[(method, code)] = (
                self.rpcs.labels(method, code),
                self.latency.labels(method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def on_commit(self, events: list[Event]) -> None:
        for event in events:
            self.events.labels(event.subject.value, event.kind.value).inc()
            if event.kind is EventKind.ANOMALY and event.anomaly is not None:
                self.anomalies.labels(event.anomaly.kind.value).inc()

    def serve(self, host: str, port: int) -> int:
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def refresh(
        self, store: Store, clock: Clock, scheduler: Scheduler, subscribers: int
    ) -> None:
        """Counting scans tables, so it runs in the background, not on every scrape."""
        self.refresh_scheduler(store, clock, scheduler)
        self.subscribers.set(subscribers)
        if store.status().writable:
            self._state.snapshot = await store.report(partial(_snapshot, now=clock.now()))

    def refresh_scheduler(self, store: Store, clock: Clock, scheduler: Scheduler) -> None:
        """The store's state and the scheduler's, from a few indexed reads. While the
        store cannot write but can be read (a full disk, a stalled commit, a lost file),
        the scheduler's figures go on being read: they were left at their last value,
        so an outage of an hour showed the deadlines it left undone as not overdue."""
        status = store.status()
        self.store_up.set(1 if status.writable else 0)
        if not status.reachable:
            return
        try:
            self._scheduler_figures(store, clock, scheduler)
        except Exception:
            if status.writable:
                raise
            # A store that cannot write may fail reads too (a damaged file): it said so.

    def _scheduler_figures(self, store: Store, clock: Clock, scheduler: Scheduler) -> None:
        lag, _ = scheduler.observe(clock.now())
        self.lag.set(lag.total_seconds())
        self.oldest_overdue.set(lag.total_seconds())
        held = scheduler.leadership.lease()
        stored = store.read().scheduler_lease()
        self.leader.set(1 if held and stored and held.epoch == stored.epoch else 0)
        self.lease_epoch.set(stored.epoch if stored else 0)

    async def refresh_forever(
        self, store: Store, clock: Clock, scheduler: Scheduler, hub: Sized
    ) -> None:
        counted = 0.0
        while True:
            try:
                if time.monotonic() - counted >= REFRESH_SECONDS:
                    counted = time.monotonic()
                    await self.refresh(store, clock, scheduler, len(hub))
                else:
                    self.refresh_scheduler(store, clock, scheduler)
            except Unavailable:
                self.store_up.set(0)  # the store reports its outage itself
            except Exception:
                log.exception("metrics refresh failed", extra={"category": "error"})
            await asyncio.sleep(SCHEDULER_SECONDS)


def _snapshot(repo: Repository, now: Any) -> dict[str, Any]:
    return {
        "keys": repo.key_counts(now),
        "handles": repo.handle_counts(now),
        "expiries": repo.active_key_deadlines(),
    }


class _StateCollector(Collector):
    def __init__(self, per_resource: bool) -> None:
        self.per_resource = per_resource
        self.snapshot: dict[str, Any] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        keys = GaugeMetricFamily(
            "keyturn_keys", "Keys by type and status", labels=["type", "status"]
        )
        for type_name, status, count, _, _ in self.snapshot.get("keys", []):
            keys.add_metric([type_name, status], count)
        yield keys
        handles = GaugeMetricFamily(
            "keyturn_handles", "Handles by type and status", labels=["type", "status"]
        )
        for type_name, status, count, _, _ in self.snapshot.get("handles", []):
            handles.add_metric([type_name, status], count)
        yield handles
        deadlines = self.snapshot.get("expiries", [])
        yield from _earliest_by_type(deadlines)
        if self.per_resource:
            yield from _per_key(deadlines)


def _earliest_by_type(deadlines: list[Any]) -> Iterator[GaugeMetricFamily]:
    """What an alert needs ("a key of this type expires within a day"), naming no key."""
    expiry = GaugeMetricFamily(
        "keyturn_keys_next_expiry_timestamp_seconds",
        "When the first active key of each type expires (its primary version)",
        labels=["type"],
    )
    rotation = GaugeMetricFamily(
        "keyturn_keys_next_rotation_timestamp_seconds",
        "When the first active key of each type rotates next",
        labels=["type"],
    )
    first_expiry: dict[str, int] = {}
    first_rotation: dict[str, int] = {}
    for _, type_name, expire, rotate in deadlines:
        first_expiry[type_name] = min(expire, first_expiry.get(type_name, expire))
        if rotate is not None:
            first_rotation[type_name] = min(rotate, first_rotation.get(type_name, rotate))
    for type_name, micros in sorted(first_expiry.items()):
        expiry.add_metric([type_name], micros / 1e6)
    for type_name, micros in sorted(first_rotation.items()):
        rotation.add_metric([type_name], micros / 1e6)
    yield expiry
    yield rotation


def _per_key(deadlines: list[Any]) -> Iterator[GaugeMetricFamily]:
    expiry = GaugeMetricFamily(
        "keyturn_key_expiry_timestamp_seconds",
        "When each active key's primary version expires",
        labels=["key_id", "type"],
    )
    rotation = GaugeMetricFamily(
        "keyturn_key_next_rotation_timestamp_seconds",
        "When each active key rotates next",
        labels=["key_id", "type"],
    )
    for key_id, type_name, expire, rotate in deadlines:
        expiry.add_metric([key_id, type_name], expire / 1e6)
        if rotate is not None:
            rotation.add_metric([key_id, type_name], rotate / 1e6)
    yield expiry
    yield rotation
