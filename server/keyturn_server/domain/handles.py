"""Workflow handles (the Vault token model): records, and the rules of one validation.

A handle has a public id and a secret token; the store keeps only a keyed digest of
each secret. :func:`decide` is the whole validation rule, a pure function of the
handle, the presented secret, the request context, the clock and the policies; the
validation engine (:mod:`validation`) runs it inside one unit of work so that checks
and the usage count are atomic.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, TypeVar

from keyturn_server.domain.anomalies import Anomaly, AnomalyAction, AnomalyKind
from keyturn_server.domain.config import HandleType
from keyturn_server.domain.policy import SecurityPolicies

RATE_WINDOW = timedelta(minutes=1)
_Record = TypeVar("_Record")


class HandleState(enum.Enum):
    ACTIVE = "ACTIVE"
    EXHAUSTED = "EXHAUSTED"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"


class HandleStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    EXPIRING = "EXPIRING"
    EXPIRED = "EXPIRED"
    EXHAUSTED = "EXHAUSTED"
    REVOKED = "REVOKED"


class Reason(enum.Enum):
    """Why a validation was refused. Callers without rights on the handle see only
    INVALID or MALFORMED (see :func:`public_reason`)."""

    INVALID = "INVALID"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"
    EXHAUSTED = "EXHAUSTED"
    RATE_LIMITED = "RATE_LIMITED"
    CONTEXT_MISMATCH = "CONTEXT_MISMATCH"
    SUPERSEDED = "SUPERSEDED"
    MALFORMED = "MALFORMED"


def public_reason(reason: Reason) -> Reason:
    """What a caller without rights on the handle may learn: only whether the token is
    well formed. Unknown, revoked, expired, superseded, exhausted, rate-limited and
    context-mismatched tokens all read INVALID, as a stolen token must tell a thief
    nothing (a visible RATE_LIMITED would say that the token is real)."""
    return Reason.MALFORMED if reason is Reason.MALFORMED else Reason.INVALID


@dataclass(frozen=True)
class HandleSchedule:
    """The type's settings, copied at issuance: type changes affect new handles only."""

    rotation_interval: timedelta
    warning_threshold: timedelta
    max_lifetime: timedelta
    grace_period: timedelta

    @staticmethod
    def of(handle_type: HandleType) -> HandleSchedule:
        return HandleSchedule(
            handle_type.rotation_interval,
            handle_type.warning_threshold,
            handle_type.max_lifetime,
            handle_type.grace,
        )


@dataclass(frozen=True)
class RateWindow:
    """Sliding-window counter: the previous and current fixed minute, weighted."""

    start: datetime | None = None
    previous: int = 0
    current: int = 0
    #: Window in which a burst was already reported (one anomaly per window).
    flagged: datetime | None = None

    def roll(self, now: datetime) -> RateWindow:
        start = _window_start(now)
        if self.start == start:
            return self
        if self.start is not None and start < self.start:
            # A replica whose clock is behind the one that opened this minute counts into
            # it. Moving the window back would start it again from zero, and the other
            # replica would then go on from what is left: with calls alternating between
            # two replicas a minute apart, no limit held at all.
            return self
        if self.start is not None and start - self.start == RATE_WINDOW:
            return RateWindow(start, self.current, 0, self.flagged)
        return RateWindow(start, 0, 0, self.flagged)

    def estimate(self, now: datetime) -> float:
        assert self.start is not None
        elapsed = min(max((now - self.start) / RATE_WINDOW, 0.0), 1.0)
        return self.previous * (1.0 - elapsed) + self.current


def _window_start(now: datetime) -> datetime:
    return now - timedelta(seconds=now.second, microseconds=now.microsecond)


@dataclass(frozen=True)
class Handle:
    id: str
    type: str
    algorithm: str
    state: HandleState
    owner: str
    created_for: str
    context: dict[str, str]
    usage_count: int
    max_usage: int
    create_time: datetime
    rotate_time: datetime
    expire_time: datetime
    warn_time: datetime
    schedule: HandleSchedule
    generation: int = 1
    #: When the next EXPIRING event is due; None once announced.
    notify_time: datetime | None = None
    last_used_time: datetime | None = None
    anomaly_count: int = 0
    bound_ip: str | None = None
    bound_user_agent: str | None = None
    revoke_reason: str | None = None
    rate: RateWindow = field(default_factory=RateWindow)

    def status(self, now: datetime) -> HandleStatus:
        if self.state is HandleState.REVOKED:
            return HandleStatus.REVOKED
        if self.state is HandleState.EXPIRED or now >= self.expire_time:
            return HandleStatus.EXPIRED
        if self.state is HandleState.EXHAUSTED:
            return HandleStatus.EXHAUSTED
        if now >= self.warn_time:
            return HandleStatus.EXPIRING
        return HandleStatus.ACTIVE

    @property
    def remaining_uses(self) -> int:
        return max(0, self.max_usage - self.usage_count)


def handle_deadlines(
    now: datetime, expire_time: datetime, schedule: HandleSchedule
) -> tuple[datetime, datetime]:
    """(rotate time, warn time) for a secret issued at ``now``; never past the expiry."""
    rotate = min(now + schedule.rotation_interval, expire_time)
    return rotate, rotate - schedule.warning_threshold


@dataclass(frozen=True)
class HandleSecret:
    """One secret of a handle, known only by its keyed digest."""

    digest: bytes
    handle_id: str
    generation: int
    create_time: datetime
    superseded_time: datetime | None = None
    #: Until when a superseded secret still validates (with rotated=True).
    grace_until: datetime | None = None
    #: An automatically issued successor, sealed, until its owner picks it up.
    sealed_token: bytes | None = None


@dataclass(frozen=True)
class Presentation:
    """What a ValidateHandle call brings besides the token."""

    ip: str | None
    user_agent: str | None
    peer: str


@dataclass(frozen=True)
class Decision:
    valid: bool
    reason: Reason | None
    handle: Handle
    rotated: bool = False
    anomalies: tuple[Anomaly, ...] = ()
    #: The handle became EXHAUSTED, EXPIRED or REVOKED by this validation.
    transition: HandleState | None = None


def decide(
    handle: Handle,
    secret: HandleSecret,
    seen: Presentation,
    now: datetime,
    policies: SecurityPolicies,
    *,
    use: bool = True,
) -> Decision:
    """Apply every rule of a validation, in order: state, lifetime, usage, superseded
    secret, context binding, rate limit; then count the use.

    Context binding comes before the rate limit, so that only presentations that pass
    it (the owner's) count against the handle's rate: a thief without the bound
    context cannot lock the owner out (refused presentations are throttled per
    presenter instead, in :mod:`presenters`). ``use`` is False for a presentation
    that is not a use (RotateHandle by token): it passes the same checks and counts
    towards the rate, but not towards ``max_usage``."""
    plain = _plain_use(handle, secret, seen, now, policies, use)
    if plain is not None:
        return plain
    return _decide_by_every_rule(handle, secret, seen, now, policies, use)


def _plain_use(
    handle: Handle,
    secret: HandleSecret,
    seen: Presentation,
    now: datetime,
    policies: SecurityPolicies,
    use: bool,
) -> Decision | None:
    """The decision when nothing but the counters moves, else None; nearly every
    validation under load is one. An active, unexpired handle, its current secret, the
    bound context matched exactly and nothing left to bind, a rate window of this minute
    under the limit, and a use that does not exhaust it: :func:`_decide_by_every_rule`
    gives the same decision (tests/test_decide.py checks both on generated cases), at
    about twice the cost."""
    rate = handle.rate
    start = rate.start
    if (
        handle.state is not HandleState.ACTIVE
        or start is None
        or secret.generation != handle.generation
        or not now < handle.expire_time
        or handle.bound_ip != (seen.ip or None)
        or handle.bound_user_agent != (seen.user_agent or None)
    ):
        return None
    elapsed = now - start
    if not _ZERO <= elapsed < RATE_WINDOW or start.second or start.microsecond:
        return None  # a new minute (the window rolls), or a start off the minute
    if rate.previous * (1.0 - elapsed / RATE_WINDOW) + rate.current >= (
        policies.rate_limit_per_handle
    ):
        return None
    usage = handle.usage_count
    if use and policies.track_usage:
        usage += 1
        if usage >= handle.max_usage:
            return None
    counted = _fresh(
        RateWindow,
        start=start,
        previous=rate.previous,
        current=rate.current + 1,
        flagged=rate.flagged,
    )
    if use:
        updated = _evolve(handle, rate=counted, last_used_time=now, usage_count=usage)
    else:
        updated = _evolve(handle, rate=counted)
    return _fresh(
        Decision,
        valid=True,
        reason=None,
        handle=updated,
        rotated=False,
        anomalies=(),
        transition=None,
    )


def _fresh(record: type[_Record], **fields: Any) -> _Record:
    """A frozen record of ``fields`` (every one of them) without its ``__init__``, which
    sets each field through ``object.__setattr__``: a third of the cost, on the path
    every validation takes. The records built so have no ``__post_init__``."""
    built: _Record = object.__new__(record)
    built.__dict__.update(fields)
    return built


_ZERO = timedelta(0)


def _decide_by_every_rule(
    handle: Handle,
    secret: HandleSecret,
    seen: Presentation,
    now: datetime,
    policies: SecurityPolicies,
    use: bool,
) -> Decision:
    anomalies: list[Anomaly] = []

    def anomaly(kind: AnomalyKind, evidence: dict[str, str]) -> AnomalyAction | None:
        if not policies.anomaly_detection and not (
            kind is AnomalyKind.TOKEN_REUSE and policies.prevent_reuse
        ):
            return None
        action = AnomalyAction.REVOKED if policies.revokes(kind) else AnomalyAction.FLAGGED
        if handle.state is HandleState.REVOKED:
            action = AnomalyAction.FLAGGED
        anomalies.append(Anomaly.new(kind, action, now, handle.id, evidence))
        return action

    def refuse(reason: Reason, updated: Handle, transition: HandleState | None = None) -> Decision:
        if any(a.action is AnomalyAction.REVOKED for a in anomalies):
            kinds = ",".join(a.kind.value for a in anomalies)
            updated = _evolve(updated, state=HandleState.REVOKED, revoke_reason=f"anomaly: {kinds}")
            transition = HandleState.REVOKED
        if anomalies:
            updated = _evolve(updated, anomaly_count=updated.anomaly_count + len(anomalies))
        return Decision(False, reason, updated, False, tuple(anomalies), transition)

    if handle.state is HandleState.REVOKED:
        anomaly(AnomalyKind.USE_AFTER_REVOCATION, {"revoke_reason": handle.revoke_reason or ""})
        return refuse(Reason.REVOKED, handle)
    if handle.state is HandleState.EXPIRED or now >= handle.expire_time:
        anomaly(AnomalyKind.USE_AFTER_EXPIRY, {"expired": handle.expire_time.isoformat()})
        if handle.state is HandleState.EXPIRED:
            return refuse(Reason.EXPIRED, handle)
        expired = _evolve(handle, state=HandleState.EXPIRED, notify_time=None)
        return refuse(Reason.EXPIRED, expired, HandleState.EXPIRED)
    if handle.state is HandleState.EXHAUSTED:
        anomaly(AnomalyKind.USE_AFTER_EXHAUSTION, {"max_usage": str(handle.max_usage)})
        return refuse(Reason.EXHAUSTED, handle)

    rotated = secret.generation < handle.generation
    if rotated and (secret.grace_until is None or now >= secret.grace_until):
        if policies.prevent_reuse:
            anomaly(
                AnomalyKind.TOKEN_REUSE,
                {
                    "secret_generation": str(secret.generation),
                    "current_generation": str(handle.generation),
                    "peer": seen.peer,
                },
            )
        return refuse(Reason.SUPERSEDED, handle)

    drift = _context_drift(handle, seen)
    if drift is not None:
        if drift.conflicting:
            anomaly(AnomalyKind.CONTEXT_DRIFT, drift.evidence)
        return refuse(Reason.CONTEXT_MISMATCH, handle)

    rate = handle.rate.roll(now)
    if rate.estimate(now) >= policies.rate_limit_per_handle:
        if rate.flagged != rate.start:
            rate = RateWindow(rate.start, rate.previous, rate.current, rate.start)
            anomaly(
                AnomalyKind.RATE_LIMIT_BURST,
                {"limit_per_minute": str(policies.rate_limit_per_handle), "peer": seen.peer},
            )
        return refuse(Reason.RATE_LIMITED, _evolve(handle, rate=rate))
    rate = RateWindow(rate.start, rate.previous, rate.current + 1, rate.flagged)

    # One copy of the record with every change.
    changes: dict[str, Any] = {"rate": rate}
    if handle.bound_ip is None and seen.ip:
        changes["bound_ip"] = seen.ip
    if handle.bound_user_agent is None and seen.user_agent:
        changes["bound_user_agent"] = seen.user_agent
    transition = None
    if use:
        changes["last_used_time"] = now
    if use and policies.track_usage:
        usage = changes["usage_count"] = handle.usage_count + 1
        if usage >= handle.max_usage:
            changes.update(state=HandleState.EXHAUSTED, notify_time=None)
            transition = HandleState.EXHAUSTED
    updated = _evolve(handle, **changes)
    return Decision(True, None, updated, rotated, tuple(anomalies), transition)


def _evolve(handle: Handle, **changes: Any) -> Handle:
    """``dataclasses.replace`` for the validation path, at a tenth of its cost (it
    re-runs the frozen ``__init__``, one ``object.__setattr__`` per field): a Handle has
    no ``__post_init__``, so its fields with ``changes`` are the same record. ``changes``
    must name fields (the validation's own, fixed in this module)."""
    updated: Handle = object.__new__(Handle)
    fields = updated.__dict__
    fields.update(handle.__dict__)
    fields.update(changes)
    assert len(fields) == _HANDLE_FIELDS, f"not fields of a Handle: {sorted(changes)}"
    return updated


_HANDLE_FIELDS = len(fields(Handle))


@dataclass(frozen=True)
class ContextDrift:
    """How a request's context differs from the context bound to its handle."""

    evidence: dict[str, str]
    #: The request carried another value (not merely none): a second client, so an
    #: anomaly. A request that omits a bound value is refused, but is no evidence.
    conflicting: bool


@functools.lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str | None:
    """One spelling per address: compressed, lower case, an IPv4-mapped IPv6 address as
    its IPv4 address; None when ``text`` is no address. Bound and presented addresses
    were compared as text, so ``2001:DB8::1`` against ``2001:db8::1`` (or ``10.0.0.1``
    against ``::ffff:10.0.0.1``) was a context mismatch, and a drift anomaly that could
    revoke the handle of a client that had not moved."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def _same_ip(bound: str | None, seen: str | None) -> bool:
    """``seen`` is canonical when it is an address (the service sees to it); a bound
    address stored before addresses were made canonical is compared in its canonical
    spelling, and bound text that is no address only as it was given."""
    if bound == (seen or None):
        return True
    return bound is not None and seen is not None and canonical_ip(bound) == seen


def _context_drift(handle: Handle, seen: Presentation) -> ContextDrift | None:
    """How the request differs from the bound context; None when it matches. A bound
    value that the request does not carry is a mismatch too (nothing to check against)."""
    evidence: dict[str, str] = {}
    conflicting = False
    if handle.bound_ip is not None and not _same_ip(handle.bound_ip, seen.ip):
        evidence.update(expected_ip=handle.bound_ip, seen_ip=seen.ip or "")
        conflicting = conflicting or bool(seen.ip)
    if handle.bound_user_agent is not None and seen.user_agent != handle.bound_user_agent:
        evidence.update(
            expected_user_agent=handle.bound_user_agent, seen_user_agent=seen.user_agent or ""
        )
        conflicting = conflicting or bool(seen.user_agent)
    return ContextDrift(evidence, conflicting) if evidence else None
