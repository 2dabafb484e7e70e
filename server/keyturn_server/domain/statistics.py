"""In-process counters and latency windows behind the statistics RPCs and metrics.

Counts of records come from the store (durable); rates, outcomes and latencies are
counted here since the server started, which is what an operator compares over time.
Under ``--workers`` each worker counts what it served; a statistics call combines every
worker's (:meth:`Statistics.snapshot`, :meth:`Statistics.combined`), so the answer does
not depend on which worker the caller's connection landed on.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

_SAMPLES = 10_000
#: The latest samples of each window a worker shares for a combined answer: enough for
#: a p99, and a few tens of kilobytes per worker.
SHARED_SAMPLES = 2_000


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50: timedelta
    p99: timedelta
    max: timedelta


class LatencyWindow:
    """The last samples of one operation, for percentiles that follow current load."""

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=_SAMPLES)
        self.count = 0
        self._max = 0.0

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1
        self._max = max(self._max, seconds)

    def shared(self) -> dict[str, Any]:
        latest = list(self._samples)[-SHARED_SAMPLES:]
        return {"count": self.count, "max": self._max, "samples": latest}

    @classmethod
    def combined(cls, parts: Iterable[dict[str, Any]]) -> LatencyWindow:
        window = cls()
        for part in parts:
            window._samples.extend(part["samples"])
            window.count += part["count"]
            window._max = max(window._max, part["max"])
        return window

    def summary(self) -> LatencySummary:
        ordered = sorted(self._samples)

        def at(q: float) -> timedelta:
            if not ordered:
                return timedelta(0)
            return timedelta(seconds=ordered[min(len(ordered) - 1, int(q * len(ordered)))])

        return LatencySummary(self.count, at(0.50), at(0.99), timedelta(seconds=self._max))


@dataclass
class Statistics:
    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    operations: Counter[str] = field(default_factory=Counter)
    validations: int = 0
    validations_succeeded: int = 0
    failures_by_reason: Counter[str] = field(default_factory=Counter)
    integrity_failures: int = 0
    #: Verifications of the audit log that found its chain broken (only ever grows), and
    #: the latest break found by this process ("" while none was).
    audit_breaks: int = 0
    audit_break: str = ""
    latency: dict[str, LatencyWindow] = field(default_factory=dict)

    def count_integrity_failure(self) -> None:
        """A stored value or row failed authentication (it was altered outside Keyturn)."""
        self.integrity_failures += 1

    def observe(self, operation: str, seconds: float) -> None:
        window = self.latency.get(operation)
        if window is None:
            window = self.latency[operation] = LatencyWindow()
        window.add(seconds)

    def summary(self, operation: str) -> LatencySummary:
        window = self.latency.get(operation)
        return window.summary() if window else LatencySummary(0, *(timedelta(0),) * 3)

    def snapshot(self) -> dict[str, Any]:
        """What this process counted, for another to combine (JSON types only)."""
        return {
            "requests": dict(self.requests),
            "errors": dict(self.errors),
            "operations": dict(self.operations),
            "validations": self.validations,
            "validations_succeeded": self.validations_succeeded,
            "failures_by_reason": dict(self.failures_by_reason),
            "integrity_failures": self.integrity_failures,
            "audit_breaks": self.audit_breaks,
            "audit_break": self.audit_break,
            "latency": {name: window.shared() for name, window in self.latency.items()},
        }

    @classmethod
    def combined(cls, snapshots: Iterable[dict[str, Any]]) -> Statistics:
        """The counts of several processes added up, their latency windows pooled."""
        total = cls()
        windows: dict[str, list[dict[str, Any]]] = {}
        for part in snapshots:
            total.requests.update(part["requests"])
            total.errors.update(part["errors"])
            total.operations.update(part["operations"])
            total.validations += part["validations"]
            total.validations_succeeded += part["validations_succeeded"]
            total.failures_by_reason.update(part["failures_by_reason"])
            total.integrity_failures += part["integrity_failures"]
            total.audit_breaks += part.get("audit_breaks", 0)
            total.audit_break = part.get("audit_break", "") or total.audit_break
            for name, window in part["latency"].items():
                windows.setdefault(name, []).append(window)
        total.latency = {name: LatencyWindow.combined(parts) for name, parts in windows.items()}
        return total


@dataclass(frozen=True)
class RecentCounts:
    last_hour: int = 0
    last_day: int = 0
    last_week: int = 0


@dataclass
class TypeCounts:
    total: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    usage: int = 0
    top_usage: int = 0
    versions: int = 0


@dataclass
class Report:
    """Statistics of keys or handles at one moment."""

    time: datetime
    total: int
    by_status: Counter[str]
    by_type: dict[str, TypeCounts]
    rotations: RecentCounts
    expirations: RecentCounts
    generated: RecentCounts


WINDOWS = (timedelta(hours=1), timedelta(days=1), timedelta(days=7))


def recent(
    counts_since: Callable[[datetime], list[tuple[str, str, int]]],
    now: datetime,
    subject: str,
) -> dict[str, RecentCounts]:
    """Event counts of ``subject`` by kind over the last hour, day and week."""
    per_window = [
        Counter({k: n for s, k, n in counts_since(now - w) if s == subject}) for w in WINDOWS
    ]
    kinds = set().union(*per_window)
    return {k: RecentCounts(*(c[k] for c in per_window)) for k in kinds}


def report(
    rows: list[tuple[str, str, int, int, int]],
    events: dict[str, RecentCounts],
    now: datetime,
    handles: bool,
) -> Report:
    by_type: dict[str, TypeCounts] = {}
    by_status: Counter[str] = Counter()
    for type_name, status, count, usage, extra in rows:
        counts = by_type.setdefault(type_name, TypeCounts())
        counts.total += count
        counts.by_status[status] += count
        counts.usage += usage
        if handles:
            counts.top_usage = max(counts.top_usage, extra)
        else:
            counts.versions += extra
        by_status[status] += count
    empty = RecentCounts()
    return Report(
        time=now,
        total=sum(by_status.values()),
        by_status=by_status,
        by_type=by_type,
        rotations=events.get("ROTATED", empty),
        expirations=events.get("EXPIRED", empty),
        generated=events.get("CREATED", empty),
    )
