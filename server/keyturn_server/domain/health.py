"""Health of the service by component: store, scheduler, keys and handles.

A component is NOT_SERVING when it cannot do its job (the store cannot be reached or
cannot commit, the scheduler stopped, or due work waits longer than the allowed lag);
figures and reasons say why. The standard gRPC health service is driven from the same
verdicts.

The scheduler's lag is the age of the oldest overdue deadline, read from the store, so
every replica reports the same figure whoever leads, and it grows when nobody schedules
(a stalled leader, no leader). ``leader`` is true only on the replica whose lease is the
one stored. Health answers while the store is away: what cannot be read is reported as
such, never as an error. Why the store fails, in its own words (the database's host,
port and name, the data directory's files), is for callers that may read diagnostics
(operators) and the log; the others read what it means: unreachable, or not writable.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from keyturn_server.domain.access import Permission, Principal
from keyturn_server.domain.errors import ONE_CALLS_FATE, InvalidArgument, KeyturnError, Unavailable
from keyturn_server.domain.lifecycle import Scheduler
from keyturn_server.domain.limits import quote
from keyturn_server.domain.repositories import Repository, Store
from keyturn_server.domain.statistics import Statistics

log = logging.getLogger("keyturn.health")
#: Due work older than this is reported NOT_SERVING (--scheduler-max-lag).
MAX_LAG = timedelta(minutes=1)
#: How long the keys' and handles' counts may take before they are reported as not
#: answered. A disk that stalls holds them for as long as it does: GetHealth hung with
#: them, past the caller's deadline, and told the on-call nothing.
COUNT_WITHIN = 5.0
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
        max_lag: timedelta = MAX_LAG,
    ) -> None:
        self._store = store
        self._scheduler = scheduler
        self._stats = stats
        #: Every worker's counts combined (--workers), else None: this process's. Each
        #: worker counted only the reads it served, so GetHealth said "3 reads failed
        #: authentication" or nothing, or an audit break or none, by which worker answered.
        self.statistics: Callable[[], Awaitable[Statistics]] | None = None
        self._started = started
        self.max_lag = max_lag
        self.count_within = COUNT_WITHIN
        #: The overall verdict last said in the log, and since when it was NOT_SERVING.
        self._said = Serving.SERVING
        self._down_since: datetime | None = None

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
        detailed = principal is None or principal.may(Permission.DIAGNOSTICS_READ)
        # Counting scans: within the caller's share of the report threads, as listings.
        caller = principal.name if principal is not None else ""
        stats = self._stats if self.statistics is None else await self.statistics()
        store = self._store_component(stats, detailed)
        # The counts run at once: on a stalled disk each waits its COUNT_WITHIN, and one
        # after the other they held the answer twice that (10 s, past many deadlines).
        counted = dict(
            zip(
                ("keys", "handles"),
                await asyncio.gather(
                    self._counted(
                        "keys", partial(self._keys, stats=stats), now, store, caller, detailed
                    )
                    if "keys" in names
                    else _nothing(),
                    self._counted("handles", self._handles, now, store, caller, detailed)
                    if "handles" in names
                    else _nothing(),
                ),
                strict=True,
            )
        )
        handles = counted["handles"]
        if handles is not None and principal is not None and not principal.sees_all():
            # A count that a refused stolen token moves is an existence oracle.
            handles.figures.pop("anomalies_last_hour", None)
        components: list[Component] = []
        for name in names:
            if name == "store":
                components.append(store)
            elif name == "scheduler":
                components.append(self._scheduler_component(now, store, True, detailed))
            else:
                part = counted[name]
                assert part is not None
                components.append(part)
        overall = (
            Serving.NOT_SERVING
            if any(c.status is Serving.NOT_SERVING for c in components)
            else Serving.SERVING
        )
        return HealthReport(overall, now, now - self._started, components)

    async def _counted(
        self,
        name: str,
        count: Callable[[Repository, datetime, Component], Component],
        now: datetime,
        store: Component,
        caller: str,
        detailed: bool,
    ) -> Component:
        try:
            async with asyncio.timeout(self.count_within):
                return await self._store.report(lambda r: count(r, now, store), caller)
        except Unavailable as exc:
            part = Component(name)
            part.down(f"cannot count: {_told(exc, detailed)}")
            return part
        except TimeoutError:
            part = Component(name)
            part.down(
                f"cannot count: the store did not answer within {self.count_within:.0f} s "
                "(a stalled disk, or a store too busy to read)"
            )
            return part

    def _store_component(self, stats: Statistics | None = None, detailed: bool = True) -> Component:
        stats = stats or self._stats
        status = self._store.status()
        part = Component(
            "store",
            figures={
                "backend": status.backend,
                "writable": status.writable,
                "last_commit": status.last_commit,
                "pending_writes": status.pending_writes,
                "schema_version": status.schema_version,
                "reachable": status.reachable,
                "commits": status.commits,
                "writes": status.writes,
            },
        )
        if not status.writable:
            if detailed and status.problem:
                part.down(status.problem)
            elif status.reachable:
                part.down("the store cannot take changes at the moment")
            else:
                part.down("the store's database is unreachable")
        if stats.audit_break:
            part.reasons.append(
                f"the audit log failed verification ({stats.audit_breaks} times so far)"
                + (f", {stats.audit_break}" if detailed else "")
            )
        return part

    def _scheduler_component(
        self, now: datetime, store: Component, count: bool, detailed: bool = True
    ) -> Component:
        s = self._scheduler
        held = s.leadership.lease()
        part = Component(
            "scheduler",
            figures={
                "running": s.running,
                "lag": timedelta(0),
                "overdue": 0,
                "next_deadline": None,
                "leader": False,
                # Replicas are named after their host and process unless --replica-name
                # names them: what the service runs on is for the people who run it.
                "replica": s.leadership.holder if detailed else "",
                "lease_holder": "",
                "lease_epoch": 0,
            },
        )
        if store.status is Serving.NOT_SERVING:
            part.down("deadlines cannot be acted on while the store is not serving")
            if not store.figures["reachable"]:
                return part
            # Still read, so the figures say how late the work it holds up is.
        try:
            reader = self._store.read()
            lag, earliest = s.observe(now if held is not None else self._leaders_now(now))
            stored = reader.scheduler_lease()
            overdue = (
                sum(len(reader.due(kind, now, 1000)) for kind in s.kinds()) if count and lag else 0
            )
        except Unavailable as exc:
            told = f"deadlines cannot be read: {_told(exc, detailed)}"
            if exc.reason in ONE_CALLS_FATE and store.status is Serving.SERVING:
                # A table a DBA locked is locked for every replica alike: draining them
                # all for it would make a lock an outage. A scheduler kept from its work
                # for long shows in its lag (--scheduler-max-lag) once the read goes on.
                part.reasons.append(told)
            else:
                part.down(told)
            return part
        except Exception:
            if store.status is Serving.SERVING:
                raise
            return part  # a store that cannot write may fail reads too (a damaged file)
        leader = held is not None and stored is not None and stored.epoch == held.epoch
        part.figures.update(
            lag=lag,
            overdue=overdue,
            next_deadline=earliest,
            leader=leader,
            lease_holder=stored.holder if stored and detailed else "",
            lease_epoch=stored.epoch if stored else 0,
        )
        if leader and not s.running:
            part.down("this replica holds the scheduler lease but its scheduler is not running")
        if lag > self.max_lag:
            holder = f"held by {stored.holder}" if stored and stored.holder else "held by nobody"
            part.down(
                f"the oldest overdue deadline is {_seconds(lag)} old, more than the "
                f"{_seconds(self.max_lag)} allowed: no replica is keeping up"
                + (f" (scheduler lease {holder})" if detailed else "")
            )
        return part

    def _leaders_now(self, now: datetime) -> datetime:
        """The time a follower measures the scheduler's lag at. The leader acts on its own
        clock; a follower whose clock runs ahead of it took deadlines the leader had not
        reached for work left undone, and reported NOT_SERVING ("no replica is keeping
        up") while the leader kept up: with a clock 90 s ahead, after every deadline. The
        database's clock stands in for the leader's: the earlier of it and this one."""
        shared = self._store.database_time()
        return now if shared is None else min(now, shared)

    def serving(self, now: datetime) -> dict[str, Serving]:
        """Cheap verdicts for the standard health service: no counting. A change of the
        overall verdict is said in the log, once, with its reasons: the store says its
        own problems, but a scheduler that fell behind (or stopped) turned the server
        NOT_SERVING with no line at all, and load balancers drained it unexplained."""
        store = self._store_component()
        core = store.status
        scheduler = self._scheduler_component(now, store, False)
        overall = Serving.NOT_SERVING if Serving.NOT_SERVING in (core, scheduler.status) else core
        self._say(overall, [*store.reasons, *scheduler.reasons], now)
        return {"": overall, "keys": core, "handles": core, "admin": core}

    def _say(self, overall: Serving, reasons: list[str], now: datetime) -> None:
        if overall is self._said:
            return
        self._said = overall
        if overall is Serving.NOT_SERVING:
            self._down_since = now
            log.warning(
                "health: NOT_SERVING",
                extra={"category": "error", "reasons": "; ".join(reasons)},
            )
        elif self._down_since is not None:
            log.warning(
                "health: SERVING again",
                extra={
                    "category": "error",
                    "down_seconds": round((now - self._down_since).total_seconds(), 1),
                },
            )

    def _keys(
        self, reader: Repository, now: datetime, store: Component, stats: Statistics
    ) -> Component:
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
                "integrity_failures": stats.integrity_failures,
            },
        )
        if store.status is Serving.NOT_SERVING:
            part.down("the store is not writable")
        if overdue:
            part.reasons.append(f"{overdue} keys are past their rotation time")
        if stats.integrity_failures:
            part.reasons.append(
                f"{stats.integrity_failures} reads of stored records failed authentication"
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


async def _nothing() -> Component | None:
    return None


def _told(error: KeyturnError, detailed: bool) -> str:
    """``error``'s message, and its detail for a caller that may read diagnostics."""
    return f"{error.message} ({error.detail})" if detailed and error.detail else error.message


def _seconds(span: timedelta) -> str:
    return f"{span.total_seconds():.0f} s"
