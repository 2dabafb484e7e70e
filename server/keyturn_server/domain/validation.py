"""The validation engine: ValidateHandle calls that arrive together are decided together.

Each presented token is looked up by its digests, :func:`handles.decide` applies the
rules, and what the decision changed is stored and journalled, all in one unit of work
(:mod:`coalesce`). Items are decided one after another in arrival order, each seeing the
handle as the ones before it left it, as if each were its own transaction; with the
SQLite store's single writer that makes the checks and the usage count atomic, and with
PostgreSQL the handle rows are locked FOR UPDATE.

A refusal that the caller has no right to see in detail (it does not own the handle, and
is no operator or admin) must look like an unknown token, in its answer and its timing.
So it is answered as soon as it is decided, before the commit, as an unknown token is.
What a refusal records (an anomaly on the handle) is written at most once per handle per
minute, whoever presents it: so that a thief repeating it does not keep the writer
visibly busier than with made-up tokens, and an owner's retry loop does not fill the
audit trail (its answers still name the anomaly each time). Revocations and state
changes are always written.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from keyturn_server.clock import Clock, to_micros
from keyturn_server.domain.access import SYSTEM, Principal
from keyturn_server.domain.anomalies import Anomaly, AnomalyAction, AnomalyKind
from keyturn_server.domain.coalesce import Coalescer
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.errors import Unavailable
from keyturn_server.domain.events import EventKind
from keyturn_server.domain.handle_lifecycle import withdraw_successors
from keyturn_server.domain.handles import (
    Decision,
    Handle,
    HandleSecret,
    HandleState,
    Presentation,
    decide,
)
from keyturn_server.domain.journal import Journal
from keyturn_server.domain.presenters import WINDOW_SECONDS, PresenterLimiter, presenter_peer
from keyturn_server.domain.repositories import Repository, Store
from keyturn_server.domain.tokens import ParsedToken

#: Handles whose quiet refusals were noted this minute (see the module docstring).
_NOTED_CAPACITY = 8192
#: Busy tokens decided at once, each in a transaction that waits for its handle: the
#: rest queue here, not in the store, so that callers of one handle held elsewhere do
#: not take every pooled session from the other validations and writes.
BUSY_AT_ONCE = 2
#: Seconds a busy token whose handle stayed held past the lock timeout is refused at once.
HELD_FOR = 1.0


@dataclass(slots=True)
class Presented:
    """A token to validate (as its candidate digests) and what came with it. One per
    call, never changed: not frozen, whose __init__ costs three times as much."""

    digests: list[bytes]
    seen: Presentation
    principal: Principal
    #: The token, for its digests under the other algorithms when these find nothing.
    token: ParsedToken


class Busy:
    """The handle of a presented token is held by another transaction (PostgreSQL: another
    replica's validation or rotation of it, a DBA's open transaction): decided apart."""


#: The one Busy result.
BUSY = Busy()


def _answered_early(item: Presented, result: Decision | Busy | None) -> bool:
    """No match, or a refusal the caller may not see in detail: answered before the commit."""
    if result is None:
        return True
    if isinstance(result, Busy):
        return False
    return not result.valid and not item.principal.has_rights_on(result.handle.owner)


class Validator:
    def __init__(
        self,
        store: Store,
        config: ConfigService,
        journal: Journal,
        clock: Clock,
        other_digests: Callable[[ParsedToken], list[bytes]],
    ):
        self._store = store
        self._other_digests = other_digests
        self._config = config
        self._journal = journal
        self._clock = clock
        self._coalescer: Coalescer[Presented, Decision | Busy | None] = Coalescer(
            store, self._decide_free, early=_answered_early
        )
        self.presenters = PresenterLimiter()
        self._busy = asyncio.Semaphore(BUSY_AT_ONCE)
        #: busy token (its first digest) -> until when it is refused at once
        self._held: dict[bytes, float] = {}
        #: handle id -> the minute of the last quiet refusal written for it
        self._noted: OrderedDict[str, int] = OrderedDict()

    async def decide(self, presented: Presented) -> Decision | None:
        """The decision on a presented token; None when no stored secret matches.

        Validations share a unit of work (:mod:`coalesce`), one at a time. One that
        waited for a handle another transaction holds held up every validation behind it;
        with a DBA's transaction left open on one handle row, each unit waited out the
        lock timeout and was refused, and the server refused most validations of every
        handle. So the shared unit skips busy handles, and their tokens are decided in
        units of their own that wait (and, past the lock timeout, fail) alone."""
        decided = await self._coalescer.submit(presented)
        if isinstance(decided, Busy):
            return await self._decide_busy(presented)
        return decided

    async def _decide_busy(self, presented: Presented) -> Decision | None:
        """A busy token, in a unit that waits for its handle. Once one waited out the lock
        timeout, the token is refused at once for HELD_FOR, so that its other callers do
        not queue for the same wait (their deadlines ran out behind one another)."""
        token = presented.digests[0]
        self._refuse_if_held(token)
        async with self._busy:
            self._refuse_if_held(token)
            try:
                return await self._store.write(lambda repo: self._decide_waiting(repo, presented))
            except Unavailable as exc:
                if exc.reason in ("STORE_ROW_LOCKED", "STORE_LOCKED"):
                    now = time.monotonic()
                    self._held = {k: t for k, t in self._held.items() if t > now}
                    self._held[token] = now + HELD_FOR
                raise

    def _refuse_if_held(self, token: bytes) -> None:
        until = self._held.get(token)
        if until is not None and time.monotonic() < until:
            raise Unavailable(
                "the handle of this token is held by another transaction in the database; "
                "nothing was done: retry",
                reason="STORE_ROW_LOCKED",
            )

    def _decide_waiting(self, repo: Repository, presented: Presented) -> Decision | None:
        [decided] = self._decide_all(repo, [presented], wait=True)
        assert not isinstance(decided, Busy)  # only a unit that skips busy handles says so
        return decided

    def throttled(self, principal: Principal) -> bool:
        """Whether this presenter has been refused too often to be answered for now."""
        return self.presenters.throttled(
            principal.name,
            presenter_peer(principal.peer),
            self._clock,
            self._config.current.policies.refused_per_presenter,
        )

    async def refused(self, principal: Principal) -> None:
        """A refusal the caller may not see in detail (an unknown or malformed token, or
        a handle it has no rights on): counted against the presenter, never against the
        address it claims; the first of a flood is an anomaly."""
        now = self._clock.now()
        flood = self.presenters.refused(principal.name, presenter_peer(principal.peer), now)
        if flood is None or not self._config.current.policies.anomaly_detection:
            return
        anomaly = Anomaly.new(
            AnomalyKind.INVALID_TOKEN_FLOOD,
            AnomalyAction.FLAGGED,
            now,
            "",
            {
                "principal": flood.principal,
                "peer": flood.peer,
                "refused_in_window": str(flood.refused_in_window),
                "window_seconds": str(WINDOW_SECONDS),
            },
        )
        await self._store.write(lambda repo: self._journal.anomaly(repo, anomaly, None))

    def _quiet(self, decision: Decision, minute: int) -> bool:
        """A refusal that changes no state and whose handle already had one written this
        minute: nothing to write (see the module docstring). By any caller: an owner's
        retry loop on its revoked token wrote an anomaly, an event and an audit entry
        on every call."""
        if decision.valid:
            return False
        if decision.transition is not None or any(
            a.action is AnomalyAction.REVOKED for a in decision.anomalies
        ):
            return False
        handle_id = decision.handle.id
        if self._noted.get(handle_id) == minute:
            return True
        self._noted[handle_id] = minute
        self._noted.move_to_end(handle_id)
        if len(self._noted) > _NOTED_CAPACITY:
            self._noted.popitem(last=False)
        return False

    def _lookup(
        self, repo: Repository, presented: Sequence[Presented], wait: bool
    ) -> tuple[dict[bytes, tuple[HandleSecret, Handle]], dict[int, list[bytes]], set[bytes]]:
        """The secrets found, the other digests of the items (by index) that had to be
        looked up again, and (unless ``wait``) the digests whose handle is busy."""

        def find(
            digests: list[bytes],
        ) -> tuple[dict[bytes, tuple[HandleSecret, Handle]], set[bytes]]:
            if wait:
                return repo.secrets_with_handles(digests), set()
            return repo.secrets_with_free_handles(digests)

        found, busy = find([d for p in presented for d in p.digests])
        # A handle issued before its type's algorithm changed (token_digests.py): only
        # tokens that matched nothing pay for the other digests, and only those of a
        # type still configured have any.
        others: dict[int, list[bytes]] = {}
        for index, item in enumerate(presented):
            if not any(d in found or d in busy for d in item.digests):
                more = self._other_digests(item.token)
                if more:
                    others[index] = more
        if others:
            more_found, more_busy = find([d for ds in others.values() for d in ds])
            found.update(more_found)
            busy.update(more_busy)
        return found, others, busy

    def _decide_free(
        self, repo: Repository, presented: Sequence[Presented]
    ) -> list[Decision | Busy | None]:
        """The shared unit's decisions: BUSY for a token whose handle is held elsewhere."""
        return self._decide_all(repo, presented, wait=False)

    def _decide_all(
        self, repo: Repository, presented: Sequence[Presented], wait: bool
    ) -> list[Decision | Busy | None]:
        found, others, busy = self._lookup(repo, presented, wait)
        now = self._clock.now()
        minute = to_micros(now) // (WINDOW_SECONDS * 1_000_000)
        policies = self._config.within(repo).policies
        #: handle id -> (as read, as the decisions so far left it)
        touched: dict[str, tuple[Handle, Handle]] = {}
        decisions: list[Decision | Busy | None] = []
        for index, item in enumerate(presented):
            digests = others.get(index, item.digests)
            hit = next((found[d] for d in digests if d in found), None)
            if hit is None:
                decisions.append(BUSY if any(d in busy for d in digests) else None)
                continue
            secret, stored = hit
            read, current = touched.get(stored.id, (stored, stored))
            decision = decide(current, secret, item.seen, now, policies)
            decisions.append(decision)
            if not decision.valid and self._quiet(decision, minute):
                continue
            touched[stored.id] = (read, decision.handle)
            journal_decision(self._journal, repo, decision, now)
        for read, current in touched.values():
            repo.update_handle(read, current)
        return decisions


def journal_decision(journal: Journal, repo: Repository, decision: Decision, now: datetime) -> None:
    """Record what a decision found and did: its anomalies, and the event of the state
    it moved the handle to (with an audit entry when policy revoked it). A handle it
    ended withdraws its sealed successors, as RemoveHandle and the scheduler do."""
    handle = decision.handle
    if decision.transition in (HandleState.EXPIRED, HandleState.REVOKED):
        withdraw_successors(repo, handle.id, now)
    for anomaly in decision.anomalies:
        journal.anomaly(repo, anomaly, handle)
    if decision.transition is HandleState.EXHAUSTED:
        journal.event(repo, EventKind.EXHAUSTED, handle, reason="max usage reached")
    elif decision.transition is HandleState.EXPIRED:
        journal.event(
            repo,
            EventKind.EXPIRED,
            handle,
            reason="max lifetime reached",
            deadline=handle.expire_time,
        )
    elif decision.transition is HandleState.REVOKED:
        journal.event(repo, EventKind.REVOKED, handle, reason=handle.revoke_reason or "policy")
        journal.audit(
            repo,
            "handle.revoke",
            about=handle,
            by=SYSTEM,
            reason=handle.revoke_reason or "",
            details={"by": "security policy"},
        )
