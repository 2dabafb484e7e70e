"""What callers do with handles: issue, read, validate, rotate, revoke, and what the
scheduler does to them on its own (automatic rotation, expiry).

A validation runs :func:`handles.decide` inside a store transaction; with the SQLite
store's single writer that makes the checks and the usage count atomic, and with
PostgreSQL the handle row is locked FOR UPDATE. Validations arriving together share one
unit of work (:mod:`coalesce`), decided one after another in arrival order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keyturn_server.clock import Clock
from keyturn_server.crypto.keyring import Keyring
from keyturn_server.crypto.seal import SealError, binding
from keyturn_server.domain import limits, tokens
from keyturn_server.domain.access import SYSTEM, Permission, Principal
from keyturn_server.domain.anomalies import (
    Anomaly,
    AnomalyAction,
    AnomalyKind,
    InvalidTokenFloodDetector,
)
from keyturn_server.domain.audit import AuditDraft, AuditLog
from keyturn_server.domain.coalesce import Coalescer
from keyturn_server.domain.configuration import ConfigService
from keyturn_server.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from keyturn_server.domain.events import EventKind, NewEvent, Subject
from keyturn_server.domain.handles import (
    Decision,
    Handle,
    HandleSchedule,
    HandleSecret,
    HandleState,
    HandleStatus,
    Presentation,
    Reason,
    decide,
    handle_deadlines,
    public_reason,
)
from keyturn_server.domain.ids import check_id, new_id
from keyturn_server.domain.paging import scoped_page, token_after
from keyturn_server.domain.statistics import Report, Statistics, recent, report
from keyturn_server.store.base import Store
from keyturn_server.store.sql import SqlRepository

SECRET_TABLE = "handle_secrets"
_ALGORITHMS = ("sha256", "sha384", "sha512")


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


@dataclass(frozen=True)
class Rotation:
    handle: Handle
    token: str
    previous_valid_until: datetime | None


@dataclass(frozen=True)
class _Presented:
    """A token to validate (as its candidate digests) and what came with it."""

    digests: list[bytes]
    seen: Presentation


def successor_binding(handle_id: str, generation: int) -> bytes:
    return binding(SECRET_TABLE, handle_id, generation)


class HandleService:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        config: ConfigService,
        audit: AuditLog,
        clock: Clock,
        stats: Statistics,
    ) -> None:
        self._store = store
        self._keyring = keyring
        self._config = config
        self._audit = audit
        self._clock = clock
        self._stats = stats
        self.floods = InvalidTokenFloodDetector()
        self._validations: Coalescer[_Presented, Decision | None] = Coalescer(
            store, self._validate_all
        )

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
        handle_type = self._config.current.handle_types.get(type_name)
        if handle_type is None:
            known = ", ".join(sorted(self._config.current.handle_types))
            raise InvalidArgument(
                f"unknown handle type {type_name!r}; one of {known}", field="type"
            )
        context = _normalise(context)
        token = tokens.new_token(type_name, handle_type.handle_length)
        digest = self._keyring.digest(token, handle_type.algorithm)
        handle_id = new_id("hdl")

        def work(repo: SqlRepository) -> Handle:
            now = self._clock.now()
            policies = self._config.current.policies
            active = repo.count_active_handles(principal.name, now)
            if active >= policies.max_concurrent_handles:
                raise ResourceExhausted(
                    f"{principal.name!r} already has {active} active handles "
                    f"(max_concurrent_handles is {policies.max_concurrent_handles}); "
                    "remove some or wait for them to expire",
                    reason="MAX_CONCURRENT_HANDLES",
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
            self.event(repo, EventKind.CREATED, handle, "generated")
            self._record(
                repo,
                principal,
                "handle.generate",
                handle,
                user_id,
                "",
                {"type": type_name, "token_digest": digest.hex()[:16]},
            )
            return handle

        handle = await self._store.write(work)
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
        owner, page = scoped_page(
            principal, "handles", type_name, status, owner, page_size, page_token
        )
        now = self._clock.now()
        found = await self._store.report(
            lambda repo: repo.list_handles(now, type_name, status, owner, page.after, page.size)
        )
        handles: list[Handle] = found.items
        return HandlePage(handles, token_after(page, handles, found.more), found.total)

    async def statistics(self, principal: Principal) -> tuple[Report, dict[str, int]]:
        """The report and anomaly counts by kind."""
        principal.require(Permission.STATS_READ)
        now = self._clock.now()

        def work(repo: SqlRepository) -> tuple[Report, dict[str, int]]:
            counts = report(
                repo.handle_counts(now), recent(repo.event_counts, now, "handle"), now, handles=True
            )
            return counts, repo.anomaly_counts()

        return await self._store.report(work)

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
            result = await self._refused(principal, seen, Reason.MALFORMED)
        else:
            decision = await self._validations.submit(_Presented(self._digests(parsed), seen))
            if decision is None:
                result = await self._refused(principal, seen, Reason.INVALID)
            else:
                result = self._as_seen_by(principal, decision)
        self._stats.validations += 1
        if result.valid:
            self._stats.validations_succeeded += 1
        elif result.reason is not None:
            self._stats.failures_by_reason[result.reason.value] += 1
        self._stats.observe("validate", time.perf_counter() - started)
        return result

    def _digests(self, parsed: tokens.ParsedToken) -> list[bytes]:
        handle_type = self._config.current.handle_types.get(parsed.type)
        algorithms = (handle_type.algorithm,) if handle_type else _ALGORITHMS
        return [self._keyring.digest(parsed.text, a) for a in algorithms]

    def _validate_all(
        self, repo: SqlRepository, presented: Sequence[_Presented]
    ) -> list[Decision | None]:
        """Validations in the order they arrived, in one unit of work: each sees the
        handle as the ones before it left it, as if each were its own transaction."""
        found = repo.secrets_with_handles([d for p in presented for d in p.digests])
        now = self._clock.now()
        policies = self._config.current.policies
        latest: dict[str, tuple[Handle, Any]] = {}
        decisions: list[Decision | None] = []
        for item in presented:
            hit = next((found[d] for d in item.digests if d in found), None)
            if hit is None:
                decisions.append(None)
                continue
            secret, handle, stored = hit
            handle, stored = latest.get(handle.id, (handle, stored))
            decision = decide(handle, secret, item.seen, now, policies)
            latest[handle.id] = (decision.handle, stored)
            self._consequences(repo, decision.handle, decision.anomalies, decision.transition)
            decisions.append(decision)
        for handle, stored in latest.values():
            # Only what changed: a plain validation touches no indexed column.
            repo.update_handle_columns(handle.id, stored, handle)
        return decisions

    def _consequences(
        self,
        repo: SqlRepository,
        handle: Handle,
        anomalies: tuple[Anomaly, ...],
        transition: HandleState | None,
    ) -> None:
        for anomaly in anomalies:
            self.record_anomaly(repo, anomaly, handle)
        if transition is HandleState.EXHAUSTED:
            self.event(repo, EventKind.EXHAUSTED, handle, "max usage reached")
        elif transition is HandleState.EXPIRED:
            self.event(
                repo, EventKind.EXPIRED, handle, "max lifetime reached", deadline=handle.expire_time
            )
        elif transition is HandleState.REVOKED:
            self.event(repo, EventKind.REVOKED, handle, handle.revoke_reason or "policy")
            self._record(
                repo,
                SYSTEM,
                "handle.revoke",
                handle,
                "",
                handle.revoke_reason or "",
                {"by": "security policy"},
            )

    def record_anomaly(self, repo: SqlRepository, anomaly: Anomaly, handle: Handle | None) -> None:
        repo.insert_anomaly(anomaly)
        repo.append_event(
            NewEvent(
                EventKind.ANOMALY,
                Subject.HANDLE,
                anomaly.handle_id,
                handle.type if handle else "",
                handle.owner if handle else "",
                handle,
                reason=anomaly.kind.value,
                anomaly=anomaly,
            ),
            anomaly.time,
        )
        details = {
            "kind": anomaly.kind.value,
            "severity": anomaly.severity.name,
            "action": anomaly.action.value,
            "anomaly_id": anomaly.id,
        }
        details.update({f"evidence.{k}": v for k, v in anomaly.evidence.items()})
        self._audit.record(
            repo,
            anomaly.time,
            AuditDraft(
                "handle.anomaly",
                SYSTEM.name,
                SYSTEM.role.value,
                "handle",
                anomaly.handle_id,
                outcome="flagged",
                details=details,
            ),
        )

    async def _refused(
        self, principal: Principal, seen: Presentation, reason: Reason
    ) -> Validation:
        """An unknown or malformed token: count it against the peer, report floods."""
        now = self._clock.now()
        peer = seen.ip or principal.peer or principal.name
        policies = self._config.current.policies
        count = self.floods.record(peer, now) if policies.anomaly_detection else None
        if count is not None:
            anomaly = Anomaly.new(
                AnomalyKind.INVALID_TOKEN_FLOOD,
                AnomalyAction.FLAGGED,
                now,
                "",
                {
                    "peer": peer,
                    "refused_in_window": str(count),
                    "window_seconds": str(int(self.floods.window.total_seconds())),
                },
            )
            await self._store.write(lambda repo: self.record_anomaly(repo, anomaly, None))
        return Validation(False, public_reason(reason), None)

    def _as_seen_by(self, principal: Principal, decision: Decision) -> Validation:
        handle = decision.handle
        if principal.has_rights_on(handle.owner):
            return Validation(
                decision.valid, decision.reason, handle, decision.rotated, decision.anomalies
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
    ) -> Rotation:
        principal.require(Permission.HANDLE_MANAGE)
        limits.raise_if(limits.common(user_id, reason))
        if bool(handle_id) == bool(token):
            raise InvalidArgument("give exactly one of handle_id or token", field="target")
        if handle_id:
            check_id("hdl", handle_id, "handle_id")
            digests: list[bytes] = []
        else:
            parsed = tokens.parse(token)
            if parsed is None:
                raise InvalidArgument(
                    "not a Keyturn handle token", field="token", reason="MALFORMED_TOKEN"
                )
            digests = self._digests(parsed)

        def work(repo: SqlRepository) -> Rotation | Anomaly:
            now = self._clock.now()
            if handle_id:
                handle = repo.get_handle(handle_id, for_update=True)
                if handle is None or not principal.has_rights_on(handle.owner):
                    raise NotFound(f"handle {handle_id!r} not found", reason="HANDLE_NOT_FOUND")
                secret = None
            else:
                secret = next((s for d in digests if (s := repo.get_secret(d))), None)
                handle = repo.get_handle(secret.handle_id, for_update=True) if secret else None
                if handle is None or secret is None:
                    raise _token_not_valid()
            if handle.status(now) not in (HandleStatus.ACTIVE, HandleStatus.EXPIRING):
                if secret is not None:
                    raise _token_not_valid()
                raise FailedPrecondition(
                    f"handle {handle.id!r} is {handle.status(now).value.lower()}; "
                    "only active handles rotate",
                    reason="HANDLE_NOT_ACTIVE",
                )
            if secret is not None and secret.generation < handle.generation:
                return self._presented_previous(repo, handle, secret, now)
            new_token, rotated, until = self.rotate_in(
                repo, handle, principal, user_id, reason or "manual", deliver=False
            )
            return Rotation(rotated, new_token, until)

        outcome = await self._store.write(work)
        if isinstance(outcome, Anomaly):
            raise _token_not_valid()
        return outcome

    def _presented_previous(
        self, repo: SqlRepository, handle: Handle, secret: HandleSecret, now: datetime
    ) -> Rotation | Anomaly:
        """A superseded secret presented to RotateHandle: inside its grace it collects an
        automatic rotation's successor; after it, it is reuse, as in a validation."""
        in_grace = secret.grace_until is not None and now < secret.grace_until
        if in_grace and secret.sealed_token is not None:
            try:
                successor = self._keyring.open(
                    secret.sealed_token, successor_binding(handle.id, secret.generation)
                ).decode()
            except SealError:
                raise _token_not_valid() from None
            return Rotation(handle, successor, secret.grace_until)
        if in_grace:
            raise FailedPrecondition(
                "this secret was already rotated by a caller; its successor went to that caller",
                reason="ALREADY_ROTATED",
            )
        decision = decide(
            handle, secret, Presentation(None, None, ""), now, self._config.current.policies
        )
        repo.update_handle(decision.handle)
        self._consequences(repo, decision.handle, decision.anomalies, decision.transition)
        if decision.anomalies:
            return decision.anomalies[0]
        raise _token_not_valid()

    def rotate_in(
        self,
        repo: SqlRepository,
        handle: Handle,
        principal: Principal,
        user_id: str,
        reason: str,
        deliver: bool,
    ) -> tuple[str, Handle, datetime]:
        """Issue the next secret; the current one enters its grace period. With
        ``deliver`` (automatic rotation) the new secret is sealed for its owner."""
        now = self._clock.now()
        token = tokens.new_token(handle.type, _secret_bytes(handle, self._config))
        digest = self._keyring.digest(token, handle.algorithm)
        grace_until = min(now + handle.schedule.grace_period, handle.expire_time)
        generation = handle.generation + 1
        sealed = (
            self._keyring.seal(token.encode(), successor_binding(handle.id, generation - 1))
            if deliver
            else None
        )
        for old in repo.secrets_of(handle.id):
            if old.generation == handle.generation:
                repo.update_secret(
                    dataclasses.replace(
                        old, superseded_time=now, grace_until=grace_until, sealed_token=sealed
                    )
                )
        repo.insert_secret(HandleSecret(digest, handle.id, generation, now))
        rotate, warn = handle_deadlines(now, handle.expire_time, handle.schedule)
        rotated = dataclasses.replace(
            handle,
            generation=generation,
            rotate_time=rotate,
            warn_time=warn,
            # A window already open (the last rotation before expiry) is announced at once.
            notify_time=warn,
        )
        repo.update_handle(rotated)
        event_token = (
            self._keyring.seal(token.encode(), successor_binding(handle.id, generation))
            if deliver
            else None
        )
        repo.append_event(
            NewEvent(
                EventKind.ROTATED,
                Subject.HANDLE,
                handle.id,
                handle.type,
                handle.owner,
                rotated,
                rotate,
                reason,
                sealed_token=event_token,
            ),
            now,
        )
        self._record(
            repo,
            principal,
            "handle.rotate",
            rotated,
            user_id,
            reason,
            {
                "generation": str(generation),
                "token_digest": digest.hex()[:16],
                "previous_valid_until": grace_until.isoformat(),
            },
        )
        return token, rotated, grace_until

    def open_delivered(self, handle_id: str, generation: int, sealed: bytes) -> str | None:
        try:
            return self._keyring.open(sealed, successor_binding(handle_id, generation)).decode()
        except SealError:
            return None

    async def remove(
        self, principal: Principal, handle_id: str, user_id: str, reason: str
    ) -> Handle:
        principal.require(Permission.HANDLE_MANAGE)
        limits.raise_if(limits.common(user_id, reason))
        check_id("hdl", handle_id, "handle_id")

        def work(repo: SqlRepository) -> Handle:
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
            repo.update_handle(revoked)
            for secret in repo.secrets_of(handle_id):
                if secret.sealed_token is not None:
                    repo.update_secret(dataclasses.replace(secret, sealed_token=None))
            repo.clear_sealed_event_tokens(handle_id, self._clock.now())
            self.event(repo, EventKind.REVOKED, revoked, revoked.revoke_reason or "")
            self._record(repo, principal, "handle.revoke", revoked, user_id, reason, {})
            return revoked

        return await self._store.write(work)

    # --- helpers -----------------------------------------------------------------------

    def event(
        self,
        repo: SqlRepository,
        kind: EventKind,
        handle: Handle,
        reason: str,
        deadline: datetime | None = None,
    ) -> None:
        repo.append_event(
            NewEvent(
                kind, Subject.HANDLE, handle.id, handle.type, handle.owner, handle, deadline, reason
            ),
            self._clock.now(),
        )

    def _record(
        self,
        repo: SqlRepository,
        principal: Principal,
        action: str,
        handle: Handle,
        user_id: str,
        reason: str,
        details: dict[str, str],
    ) -> None:
        self._audit.record(
            repo,
            self._clock.now(),
            AuditDraft(
                action,
                principal.name,
                principal.role.value,
                "handle",
                handle.id,
                user_id,
                reason,
                principal.peer,
                "ok",
                details,
            ),
        )


def _normalise(context: dict[str, str]) -> dict[str, str]:
    """The specification's clients send userAgent; the API's name is user_agent."""
    result = dict(context)
    if "userAgent" in result and "user_agent" not in result:
        result["user_agent"] = result.pop("userAgent")
    return result


def _secret_bytes(handle: Handle, config: ConfigService) -> int:
    handle_type = config.current.handle_types.get(handle.type)
    return handle_type.handle_length if handle_type else 32


def _token_not_valid() -> NotFound:
    # One answer for unknown, revoked, expired and superseded: it reveals nothing.
    return NotFound("the token does not name a rotatable handle", reason="TOKEN_NOT_VALID")
