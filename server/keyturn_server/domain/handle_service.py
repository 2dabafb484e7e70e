"""What callers do with handles: issue, read, validate, rotate and revoke.

The rules of a validation are :func:`handles.decide`, run by the validation engine
(:mod:`validation`); rotation and the other steps of a handle's life are
:mod:`handle_lifecycle`, which the scheduler uses too. This module checks requests,
runs them as units of work, and shapes what the caller may see.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from keyturn_server.clock import Clock
from keyturn_server.crypto.keyring import Keyring
from keyturn_server.domain import limits, tokens
from keyturn_server.domain.access import Permission, Principal, Role
from keyturn_server.domain.anomalies import (
    Anomaly,
)
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    KeyturnError,
    NotFound,
    ResourceExhausted,
)
from keyturn_server.domain.events import EventKind
from keyturn_server.domain.handle_lifecycle import HandleLifecycle, withdraw_successors
from keyturn_server.domain.handles import (
    RATE_WINDOW,
    Decision,
    Handle,
    HandleSchedule,
    HandleSecret,
    HandleState,
    HandleStatus,
    Presentation,
    Reason,
    canonical_ip,
    decide,
    handle_deadlines,
    public_reason,
)
from keyturn_server.domain.ids import check_id, new_id
from keyturn_server.domain.journal import Journal
from keyturn_server.domain.paging import (
    RECORD_BYTES,
    PageTokens,
    fitted,
    mapping_weight,
    scoped_page,
    token_after,
)
from keyturn_server.domain.repositories import Repository, Store
from keyturn_server.domain.statistics import Report, Statistics, recent, report
from keyturn_server.domain.token_digests import TokenDigests
from keyturn_server.domain.validation import Presented, Validator, journal_decision

#: Secrets one handle may be given by its owner's rotations. Every secret a handle had
#: stays while the handle does (its reuse is an anomaly), and each rotation reads them
#: all on the writer, on the event loop: a service rotating one of its handles without
#: bound made every further rotation cost more (about 110 ms with 200,000, every other
#: caller held meanwhile) and the table grow until the handle was purged. The scheduler
#: gives a handle at most its lifetime over its rotation interval (24 for a session
#: handle); operators and admins are never refused, as for key versions.
MAX_GENERATIONS = 1000


@dataclass(frozen=True)
class HandlePage:
    handles: list[Handle]
    next_page_token: str
    total_size: int


@dataclass(frozen=True)
class Validation:
    """A validation as the caller may see it."""

    valid: bool
    reason: Reason | None
    handle: Handle | None
    rotated: bool = False
    anomalies: tuple[Anomaly, ...] = ()
    #: The caller has rights on the handle (owner, operator, admin): it may see its
    #: owner. Others validating a good token see only what they need to honour it.
    rights: bool = False


@dataclass(frozen=True)
class Rotation:
    handle: Handle
    token: str
    previous_valid_until: datetime | None


class HandleService:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        config: ConfigService,
        journal: Journal,
        lifecycle: HandleLifecycle,
        clock: Clock,
        stats: Statistics,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._config = config
        self._journal = journal
        self._lifecycle = lifecycle
        self._clock = clock
        self._stats = stats
        self._digests = TokenDigests(keyring, config)
        self._validator = Validator(store, config, journal, clock, self._digests.others)
        #: Refused presentations per presenter, also counted by the REST API's token
        #: lookups (handle_lookup.py).
        self.presentations = self._validator
        self._pages = PageTokens(keyring.page_mac)

    # --- issue and read --------------------------------------------------------------

    async def generate(
        self, principal: Principal, type_name: str, context: dict[str, str], user_id: str
    ) -> tuple[Handle, str]:
        principal.require(Permission.HANDLE_CREATE)
        started = time.perf_counter()
        violations = limits.common(user_id)
        limits.mapping("context", context, violations)
        if not type_name:
            violations.append(FieldViolation("type", "required"))
        limits.raise_if(violations)
        handle_type = self._config.handle_type(type_name)
        if handle_type is None:
            known = ", ".join(sorted(self._config.current.handle_types))
            raise InvalidArgument(
                f"unknown handle type {limits.quote(type_name)}; one of {known}", field="type"
            )
        context = _normalise(context, issuing=True)
        token = tokens.new_token(type_name, handle_type.handle_length)
        digest = self._keyring.digest(token, handle_type.algorithm)
        handle_id = new_id("hdl")

        def work(repo: Repository) -> Handle:
            now = self._clock.now()
            policies = self._config.current.policies
            active = repo.count_active_handles(principal.name, now, lock=True)
            if active >= policies.max_concurrent_handles:
                first = repo.earliest_active_expiry(principal.name, now)
                raise ResourceExhausted(
                    f"{principal.name!r} already has {active} active handles "
                    f"(max_concurrent_handles is {policies.max_concurrent_handles}); "
                    "remove some or wait for them to expire",
                    reason="MAX_CONCURRENT_HANDLES",
                    retry_after=max(first - now, timedelta(seconds=1)) if first else None,
                    metadata={"limit": str(policies.max_concurrent_handles)},
                )
            schedule = HandleSchedule.of(handle_type)
            expire = now + schedule.max_lifetime
            rotate, warn = handle_deadlines(now, expire, schedule)
            handle = Handle(
                id=handle_id,
                type=type_name,
                algorithm=handle_type.algorithm,
                state=HandleState.ACTIVE,
                owner=principal.name,
                created_for=user_id,
                context=context,
                usage_count=0,
                max_usage=handle_type.max_usage,
                create_time=now,
                rotate_time=rotate,
                expire_time=expire,
                warn_time=warn,
                schedule=schedule,
                notify_time=warn,
                bound_ip=context.get("ip") or None,
                bound_user_agent=context.get("user_agent") or None,
            )
            repo.insert_handle(handle)
            repo.insert_secret(HandleSecret(digest, handle_id, 1, now))
            self._journal.event(repo, EventKind.CREATED, handle, reason="generated")
            self._journal.audit(
                repo,
                "handle.generate",
                about=handle,
                by=principal,
                user_id=user_id,
                details={"type": type_name, "token_digest": digest.hex()[:16]},
            )
            return handle

        handle = await self._store.write(work, principal.name)
        self._stats.observe("generate_handle", time.perf_counter() - started)
        return handle, token

    def get(self, principal: Principal, handle_id: str) -> Handle:
        principal.require(Permission.HANDLE_READ)
        check_id("hdl", handle_id, "handle_id")
        handle = self._store.read().get_handle(handle_id)
        if handle is None:
            raise NotFound(f"handle {handle_id!r} not found", reason="HANDLE_NOT_FOUND")
        principal.require_visible("handle", handle_id, handle.owner)
        return handle

    async def list_handles(
        self,
        principal: Principal,
        type_name: str,
        status: HandleStatus | None,
        owner: str,
        page_size: int,
        page_token: str,
    ) -> HandlePage:
        principal.require(Permission.HANDLE_READ)
        scoped, page = scoped_page(
            self._pages, principal, "handles", type_name, status, owner, page_size, page_token
        )
        if scoped is None:
            return HandlePage([], "", 0)
        now = self._clock.now()
        found = await self._store.report(
            lambda repo: repo.list_handles(
                now, type_name, status, scoped, page.after, page.size, page.total
            ),
            principal.name,
        )
        handles, cut = fitted(found.items, _weight)
        more = found.more or cut
        return HandlePage(handles, token_after(page, handles, more, found.total), found.total)

    async def statistics(self, principal: Principal) -> tuple[Report, dict[str, int]]:
        """The report and anomaly counts by kind. A service sees the anomalies of its own
        handles only: a count that moves when a stolen token is refused would tell a
        thief that the token is real."""
        principal.require(Permission.STATS_READ)
        now = self._clock.now()
        owner = "" if principal.sees_all() else principal.name

        def work(repo: Repository) -> tuple[Report, dict[str, int]]:
            counts = report(
                repo.handle_counts(now), recent(repo.event_counts, now, "handle"), now, handles=True
            )
            return counts, repo.anomaly_counts(owner=owner)

        return await self._store.report(work, principal.name)

    # --- validate --------------------------------------------------------------------

    async def validate(
        self, principal: Principal, token: str, context: dict[str, str], user_id: str
    ) -> Validation:
        principal.require(Permission.HANDLE_VALIDATE)
        started = time.perf_counter()
        violations = limits.common(user_id)
        limits.mapping("context", context, violations)
        if not token:
            violations.append(FieldViolation("token", "required"))
        limits.raise_if(violations)
        context = _normalise(context)
        seen = Presentation(context.get("ip"), context.get("user_agent"), principal.peer)
        parsed = tokens.parse(token)
        if parsed is None:
            result = await self._refused(principal, Reason.MALFORMED)
        elif self._validator.throttled(principal):
            # Refused too often: answered as an unknown token, without a lookup.
            result = await self._refused(principal, Reason.INVALID)
        else:
            decision = await self._validator.decide(
                Presented(self._digests.first(parsed), seen, principal, parsed)
            )
            if decision is None:
                result = await self._refused(principal, Reason.INVALID)
            else:
                result = self._as_seen_by(principal, decision)
                if result.handle is None:
                    await self._validator.refused(principal)
        self._stats.validations += 1
        if result.valid:
            self._stats.validations_succeeded += 1
        elif result.reason is not None:
            self._stats.failures_by_reason[result.reason.value] += 1
        self._stats.observe("validate", time.perf_counter() - started)
        return result

    async def _refused(self, principal: Principal, reason: Reason) -> Validation:
        """An unknown or malformed token: counted against the presenter (its principal
        and transport peer, not the ip it claims); floods are anomalies."""
        await self._validator.refused(principal)
        return Validation(False, public_reason(reason), None)

    def _as_seen_by(self, principal: Principal, decision: Decision) -> Validation:
        handle = decision.handle
        if principal.has_rights_on(handle.owner):
            return Validation(
                decision.valid,
                decision.reason,
                handle,
                decision.rotated,
                decision.anomalies,
                rights=True,
            )
        if decision.valid:
            return Validation(True, None, handle, decision.rotated, ())
        assert decision.reason is not None
        return Validation(False, public_reason(decision.reason), None)

    # --- rotate and revoke -----------------------------------------------------------

    async def rotate(
        self,
        principal: Principal,
        handle_id: str,
        token: str,
        user_id: str,
        reason: str,
        context: dict[str, str] | None = None,
    ) -> Rotation:
        """A new secret for a handle named by id, or by presenting its secret.

        By token, the caller must have rights on the handle (owner, operator, admin),
        and the presentation passes the rules of a validation (state, context binding,
        the handle's rate limit; it is not a use). Anyone else is answered exactly as
        for an unknown token, and the refusal counts against the presenter."""
        principal.require(Permission.HANDLE_MANAGE)
        violations = limits.common(user_id, reason)
        limits.mapping("context", context or {}, violations)
        limits.raise_if(violations)
        if bool(handle_id) == bool(token):
            raise InvalidArgument("give exactly one of handle_id or token", field="target")
        if handle_id:
            check_id("hdl", handle_id, "handle_id")
            return await self._rotate_by_id(principal, handle_id, user_id, reason)
        parsed = tokens.parse(token)
        if parsed is None:
            await self._validator.refused(principal)
            raise InvalidArgument(
                "not a Keyturn handle token", field="token", reason="MALFORMED_TOKEN"
            )
        if self._validator.throttled(principal):
            await self._validator.refused(principal)
            raise _token_not_valid()
        normalised = _normalise(context or {})
        seen = Presentation(normalised.get("ip"), normalised.get("user_agent"), principal.peer)
        digests = list(self._digests.every(parsed))

        def work(repo: Repository) -> Rotation | _Refusal | None:
            now = self._clock.now()
            secret = next((s for d in digests if (s := repo.get_secret(d))), None)
            handle = repo.get_handle(secret.handle_id, for_update=True) if secret else None
            if secret is not None and handle is not None:
                # Read again now that its handle is locked: a rotation that committed
                # meanwhile (a concurrent call with the same token, on any replica) has
                # superseded it, and the copy read before is what reuse looks like.
                secret = repo.get_secret(secret.digest)
            if handle is None or secret is None or not principal.has_rights_on(handle.owner):
                return None  # unknown, or not the caller's to rotate: one answer
            if handle.status(now) not in (HandleStatus.ACTIVE, HandleStatus.EXPIRING):
                return None
            _require_secret_room(principal, handle)  # before the presentation counts
            policies = self._config.within(repo).policies
            decision = decide(handle, secret, seen, now, policies, use=False)
            repo.update_handle(handle, decision.handle)
            journal_decision(self._journal, repo, decision, now)
            if not decision.valid:
                return _Refusal(decision)
            if decision.rotated:
                return self._presented_previous(decision.handle, secret, now)
            new_token, rotated, until = self._lifecycle.rotate(
                repo,
                decision.handle,
                by=principal,
                user_id=user_id,
                reason=reason or "manual",
                deliver=False,
            )
            return Rotation(rotated, new_token, until)

        outcome = await self._store.write(work, principal.name)
        if outcome is None:
            await self._validator.refused(principal)
            raise _token_not_valid()
        if isinstance(outcome, _Refusal):
            # Raised only now: raising inside the unit of work would undo what the
            # refusal recorded (an anomaly, a revocation).
            raise _rotation_refused(outcome.decision, self._clock.now())
        return outcome

    async def _rotate_by_id(
        self, principal: Principal, handle_id: str, user_id: str, reason: str
    ) -> Rotation:
        def work(repo: Repository) -> Rotation:
            now = self._clock.now()
            handle = repo.get_handle(handle_id, for_update=True)
            if handle is None or not principal.has_rights_on(handle.owner):
                raise NotFound(f"handle {handle_id!r} not found", reason="HANDLE_NOT_FOUND")
            if handle.status(now) not in (HandleStatus.ACTIVE, HandleStatus.EXPIRING):
                raise FailedPrecondition(
                    f"handle {handle.id!r} is {handle.status(now).value.lower()}; "
                    "only active handles rotate",
                    reason="HANDLE_NOT_ACTIVE",
                )
            _require_secret_room(principal, handle)
            new_token, rotated, until = self._lifecycle.rotate(
                repo,
                handle,
                by=principal,
                user_id=user_id,
                reason=reason or "manual",
                deliver=False,
            )
            return Rotation(rotated, new_token, until)

        return await self._store.write(work, principal.name)

    def _presented_previous(self, handle: Handle, secret: HandleSecret, now: datetime) -> Rotation:
        """A superseded secret inside its grace (decide() refused it after the grace)
        collects the successor an automatic rotation sealed on it."""
        successor = self._lifecycle.collect_successor(handle, secret)
        if successor is not None:
            return Rotation(handle, successor, secret.grace_until)
        if secret.sealed_token is None:
            raise FailedPrecondition(
                "this secret was already rotated by a caller; its successor went to that caller",
                reason="ALREADY_ROTATED",
            )
        raise _token_not_valid()

    async def remove(
        self, principal: Principal, handle_id: str, user_id: str, reason: str
    ) -> Handle:
        principal.require(Permission.HANDLE_MANAGE)
        limits.raise_if(limits.common(user_id, reason))
        check_id("hdl", handle_id, "handle_id")

        def work(repo: Repository) -> Handle:
            handle = repo.get_handle(handle_id, for_update=True)
            if handle is None or not principal.has_rights_on(handle.owner):
                raise NotFound(f"handle {handle_id!r} not found", reason="HANDLE_NOT_FOUND")
            if handle.state is HandleState.REVOKED:
                raise FailedPrecondition(
                    f"handle {handle_id!r} is already revoked", reason="HANDLE_ALREADY_REVOKED"
                )
            revoked = dataclasses.replace(
                handle,
                state=HandleState.REVOKED,
                notify_time=None,
                revoke_reason=reason or f"removed by {principal.name}",
            )
            repo.update_handle(handle, revoked)
            withdraw_successors(repo, handle_id, self._clock.now())
            self._journal.event(
                repo, EventKind.REVOKED, revoked, reason=revoked.revoke_reason or ""
            )
            self._journal.audit(
                repo, "handle.revoke", about=revoked, by=principal, user_id=user_id, reason=reason
            )
            return revoked

        return await self._store.write(work, principal.name)


@dataclass(frozen=True)
class _Refusal:
    """A rotation refused with consequences (a reuse anomaly, perhaps a revocation) that
    must be kept: the unit of work returns it, and the caller raises once it committed."""

    decision: Decision


def _normalise(context: dict[str, str], issuing: bool = False) -> dict[str, str]:
    """The specification's clients send userAgent; the API's name is user_agent. An ip
    that is an address is kept in one spelling (handles.canonical_ip). One that is not
    is refused when a handle is issued; on later presentations it is kept as given, as
    before addresses were checked, so that a handle bound to such text then still
    matches it (refusing it would lock its owner out for the handle's life)."""
    result = dict(context)
    if "userAgent" in result and "user_agent" not in result:
        result["user_agent"] = result.pop("userAgent")
    ip = result.get("ip")
    if ip:
        canonical = canonical_ip(ip)
        if canonical is not None:
            result["ip"] = canonical
        elif issuing:
            raise InvalidArgument(
                f"{limits.quote(ip)} is not an IPv4 or IPv6 address",
                field="context['ip']",
                reason="INVALID_CONTEXT_IP",
            )
    return result


def _token_not_valid() -> NotFound:
    # One answer for unknown, revoked, expired and superseded tokens, and for tokens of
    # handles the caller has no rights on: it reveals nothing.
    return NotFound("the token does not name a rotatable handle", reason="TOKEN_NOT_VALID")


def _rotation_refused(decision: Decision, now: datetime) -> KeyturnError:
    """Why the owner (or an operator, an admin) may not rotate by this token."""
    if decision.reason is Reason.CONTEXT_MISMATCH:
        return FailedPrecondition(
            "the request's context does not match the context bound to the handle; "
            "send the ip and user_agent it was bound to, or rotate by handle_id",
            reason="CONTEXT_MISMATCH",
        )
    if decision.reason is Reason.RATE_LIMITED:
        return ResourceExhausted(
            f"handle {decision.handle.id!r} is over its rate limit",
            reason="HANDLE_RATE_LIMITED",
            retry_after=RATE_WINDOW - timedelta(seconds=now.second, microseconds=now.microsecond),
        )
    return _token_not_valid()


def _require_secret_room(principal: Principal, handle: Handle) -> None:
    """Refuse a service's rotation of a handle given MAX_GENERATIONS secrets already."""
    if principal.role in (Role.ADMIN, Role.OPERATOR) or handle.generation < MAX_GENERATIONS:
        return
    raise ResourceExhausted(
        f"handle {handle.id!r} has had {handle.generation} secrets, as many as a service's "
        "rotations may give one handle; generate a new handle (an operator or admin can "
        "still rotate it)",
        reason="MAX_HANDLE_GENERATIONS",
        metadata={"limit": str(MAX_GENERATIONS)},
    )


def _weight(handle: Handle) -> int:
    """About what a handle adds to a listing's answer (paging.fitted)."""
    return RECORD_BYTES + mapping_weight(handle.context)
