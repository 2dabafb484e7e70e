"""The validation engine: ValidateHandle calls that arrive together are decided together.

Each presented token is looked up by its digests, :func:`handles.decide` applies the
rules, and what the decision changed is stored and journalled, all in one unit of work
(:mod:`coalesce`). Items are decided one after another in arrival order, each seeing the
handle as the ones before it left it, as if each were its own transaction; with the
SQLite store's single writer that makes the checks and the usage count atomic, and with
PostgreSQL the handle rows are locked FOR UPDATE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from keyturn_server.clock import Clock
from keyturn_server.domain.access import SYSTEM
from keyturn_server.domain.anomalies import (
    Anomaly,
    AnomalyAction,
    AnomalyKind,
    InvalidTokenFloodDetector,
)
from keyturn_server.domain.coalesce import Coalescer
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.events import EventKind
from keyturn_server.domain.handles import Decision, Handle, HandleState, Presentation, decide
from keyturn_server.domain.journal import Journal
from keyturn_server.domain.repositories import Repository, Store


@dataclass(frozen=True)
class Presented:
    """A token to validate (as its candidate digests) and what came with it."""

    digests: list[bytes]
    seen: Presentation


class Validator:
    def __init__(self, store: Store, config: ConfigService, journal: Journal, clock: Clock):
        self._store = store
        self._config = config
        self._journal = journal
        self._clock = clock
        self._coalescer: Coalescer[Presented, Decision | None] = Coalescer(store, self._decide_all)
        self.floods = InvalidTokenFloodDetector()

    async def decide(self, presented: Presented) -> Decision | None:
        """The decision on a presented token; None when no stored secret matches."""
        return await self._coalescer.submit(presented)

    async def refused(self, peer: str) -> None:
        """A token that matches no secret, or is not a token at all: counted against
        the peer that sent it; the first of a flood is an anomaly."""
        now = self._clock.now()
        policies = self._config.current.policies
        count = self.floods.record(peer, now) if policies.anomaly_detection else None
        if count is None:
            return
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
        await self._store.write(lambda repo: self._journal.anomaly(repo, anomaly, None))

    def _decide_all(
        self, repo: Repository, presented: Sequence[Presented]
    ) -> list[Decision | None]:
        found = repo.secrets_with_handles([d for p in presented for d in p.digests])
        now = self._clock.now()
        policies = self._config.current.policies
        #: handle id -> (as read, as the decisions so far left it)
        touched: dict[str, tuple[Handle, Handle]] = {}
        decisions: list[Decision | None] = []
        for item in presented:
            hit = next((found[d] for d in item.digests if d in found), None)
            if hit is None:
                decisions.append(None)
                continue
            secret, stored = hit
            read, current = touched.get(stored.id, (stored, stored))
            decision = decide(current, secret, item.seen, now, policies)
            touched[stored.id] = (read, decision.handle)
            journal_decision(self._journal, repo, decision)
            decisions.append(decision)
        for read, current in touched.values():
            repo.update_handle(read, current)
        return decisions


def journal_decision(journal: Journal, repo: Repository, decision: Decision) -> None:
    """Record what a decision found and did: its anomalies, and the event of the state
    it moved the handle to (with an audit entry when policy revoked it)."""
    handle = decision.handle
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
