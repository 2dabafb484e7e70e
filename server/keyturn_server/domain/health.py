"""Health of the service by component: store, scheduler, keys and handles.

A component is NOT_SERVING when it cannot do its job (the store cannot commit, the
scheduler stopped or fell far behind); figures and reasons say why. The standard gRPC
health service is driven from the same verdicts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keyturn_server.domain.access import Permission, Principal
from keyturn_server.domain.errors import InvalidArgument
from keyturn_server.domain.lifecycle import Scheduler
from keyturn_server.domain.limits import quote
from keyturn_server.domain.repositories import Repository, Store
from keyturn_server.domain.statistics import Statistics

#: A scheduler this far behind its oldest deadline is reported NOT_SERVING.
MAX_LAG = timedelta(minutes=5)
COMPONENTS = ("store", "scheduler", "keys", "handles")


class Serving(enum.Enum):
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"


@dataclass
class Component:
    name: str
    status: Serving = Serving.SERVING
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def down(self, reason: str) -> None:
        self.status = Serving.NOT_SERVING
        self.reasons.append(reason)


@dataclass
class HealthReport:
    status: Serving
    time: datetime
    uptime: timedelta
    components: list[Component]


class HealthService:
    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        stats: Statistics,
        started: datetime,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._stats = stats
        self._started = started
        self._is_leader = is_leader

    async def check(
        self, principal: Principal | None, component: str, now: datetime
    ) -> HealthReport:
        if principal is not None:
            principal.require(Permission.HEALTH_READ)
        if component and component not in COMPONENTS:
            raise InvalidArgument(
                f"unknown component {quote(component)}; one of " + ", ".join(COMPONENTS),
                field="component",
            )
        names = [component] if component else list(COMPONENTS)
        store = self._store_component()
        components: list[Component] = []
        for name in names:
            if name == "store":
                components.append(store)
            elif name == "scheduler":
                components.append(self._scheduler_component(now))
            elif name == "keys":
                components.append(await self._store.report(lambda r: self._keys(r, now, store)))
            else:
                part = await self._store.report(lambda r: self._handles(r, now, store))
                if principal is not None and not principal.sees_all():
                    # A count that a refused stolen token moves is an existence oracle.
                    part.figures.pop("anomalies_last_hour", None)
                components.append(part)
        overall = (
            Serving.NOT_SERVING
            if any(c.status is Serving.NOT_SERVING for c in components)
            else Serving.SERVING
        )
        return HealthReport(overall, now, now - self._started, components)

    def _store_component(self) -> Component:
        status = self._store.status()
        part = Component(
            "store",
            figures={
                "backend": status.backend,
                "writable": status.writable,
                "last_commit": status.last_commit,
                "pending_writes": status.pending_writes,
                "schema_version": status.schema_version,
            },
        )
        if not status.writable:
            part.down(status.problem or "the store cannot commit")
        return part

    def _scheduler_component(self, now: datetime) -> Component:
        s = self._scheduler
        leader = self._is_leader()
        lag, earliest = s.observe(now) if leader else (timedelta(0), s.next_deadline)
        part = Component(
            "scheduler",
            figures={
                "running": s.running,
                "lag": lag,
                "overdue": s.overdue if lag else 0,
                "next_deadline": earliest,
                "leader": leader,
            },
        )
        if leader and not s.running:
            part.down("the scheduler is not running")
        elif lag > MAX_LAG:
            part.down(f"the scheduler is {lag} behind its oldest deadline")
        return part

    def serving(self, now: datetime) -> dict[str, Serving]:
        """Cheap verdicts for the standard health service: no counting."""
        core = self._store_component().status
        scheduler = self._scheduler_component(now).status
        overall = Serving.NOT_SERVING if Serving.NOT_SERVING in (core, scheduler) else core
        return {"": overall, "keys": core, "handles": core, "admin": core}

    def _keys(self, reader: Repository, now: datetime, store: Component) -> Component:
        counts: dict[str, int] = {}
        for _, status, count, _, _ in reader.key_counts(now):
            counts[status] = counts.get(status, 0) + count
        overdue = reader.keys_overdue(now)
        part = Component(
            "keys",
            figures={
                "active": counts.get("ACTIVE", 0) + counts.get("EXPIRING", 0),
                "expiring": counts.get("EXPIRING", 0),
                "expired": counts.get("EXPIRED", 0),
                "removed": counts.get("REMOVED", 0),
                "rotation_queue": counts.get("EXPIRING", 0),
                "overdue": overdue,
                "integrity_failures": self._stats.integrity_failures,
            },
        )
        if store.status is Serving.NOT_SERVING:
            part.down("the store is not writable")
        if overdue:
            part.reasons.append(f"{overdue} keys are past their rotation time")
        if self._stats.integrity_failures:
            part.reasons.append(
                f"{self._stats.integrity_failures} reads of stored records failed authentication"
            )
        return part

    def _handles(self, reader: Repository, now: datetime, store: Component) -> Component:
        counts: dict[str, int] = {}
        for _, status, count, _, _ in reader.handle_counts(now):
            counts[status] = counts.get(status, 0) + count
        overdue = reader.handles_overdue(now)
        anomalies = sum(reader.anomaly_counts(now - timedelta(hours=1)).values())
        part = Component(
            "handles",
            figures={
                "active": counts.get("ACTIVE", 0) + counts.get("EXPIRING", 0),
                "expiring": counts.get("EXPIRING", 0),
                "expired": counts.get("EXPIRED", 0),
                "exhausted": counts.get("EXHAUSTED", 0),
                "revoked": counts.get("REVOKED", 0),
                "rotation_queue": counts.get("EXPIRING", 0),
                "overdue": overdue,
                "anomalies_last_hour": anomalies,
            },
        )
        if store.status is Serving.NOT_SERVING:
            part.down("the store is not writable")
        if overdue:
            part.reasons.append(f"{overdue} handles are past their rotation time")
        return part
