"""The stored, versioned configuration: read by everyone, changed only by admins,
validated whole before it is written, and audited."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

from keyturn_server.clock import Clock
from keyturn_server.domain.access import SYSTEM, Permission, Principal
from keyturn_server.domain.config import (
    Config,
    HandleType,
    KeyType,
    config_from_json,
    config_to_json,
    default_config,
)
from keyturn_server.domain.config_update import ConfigDraft, apply_update
from keyturn_server.domain.errors import Aborted
from keyturn_server.domain.journal import Journal, Resource
from keyturn_server.domain.limits import common, quote, raise_if, text
from keyturn_server.domain.repositories import ConfigRepository, Repository, Store, StoredConfig

#: Far longer than any etag this service issues.
MAX_ETAG = 128


def _latest(repo: ConfigRepository) -> Config | None:
    found = repo.latest_config()
    if found is None:
        return None
    return config_from_json(found.body, found.revision, found.update_time, found.updated_by)


def _stored(config: Config, time: datetime) -> StoredConfig:
    return StoredConfig(config_to_json(config), config.revision, time, config.updated_by)


class ConfigService:
    def __init__(self, store: Store, journal: Journal, clock: Clock) -> None:
        self._store = store
        self._journal = journal
        self._clock = clock
        self._current = default_config()
        #: Called after this process committed a new revision (to tell other workers).
        self.listeners: list[Callable[[], None]] = []

    @property
    def current(self) -> Config:
        return self._current

    async def load(self) -> Config:
        """Read the stored configuration; on first start store the defaults as revision 1."""

        def work(repo: Repository) -> Config:
            stored = _latest(repo)
            if stored is not None:
                return stored
            now = self._clock.now()
            initial = dataclasses.replace(
                default_config(), revision=1, update_time=now, updated_by=SYSTEM.name
            )
            if not repo.put_config(_stored(initial, now)):
                # Another replica starting at the same time stored it first: use that.
                return _latest(repo) or initial
            self._journal.audit(
                repo,
                "config.initialize",
                about=Resource("config", "1"),
                details={"etag": initial.etag},
                time=now,
            )
            return initial

        self._current = await self._store.write(work)
        return self._current

    def _committed(self, updated: Config) -> None:
        self._current = updated
        for listener in self.listeners:
            listener()

    def key_type(self, name: str) -> KeyType | None:
        """A key type by name, as configured now (:meth:`fresh`)."""
        return self.fresh().key_types.get(name)

    def handle_type(self, name: str) -> HandleType | None:
        """A handle type by name, as configured now (:meth:`fresh`)."""
        return self.fresh().handle_types.get(name)

    def fresh(self) -> Config:
        """The configuration as committed, whichever replica or worker changed it last.

        Another replica's change reaches this one's memory only every REFRESH_INTERVAL
        (app.py); until then it issued handles of a type just deleted, with the usage
        limit just lowered. A policy or type change applies from the very next call,
        wherever it lands: one indexed read of the newest revision's number, and the
        revision itself only when it is newer than the one held."""
        self._adopt(self._store.read())
        return self._current

    def within(self, repo: Repository) -> Config:
        """The configuration a unit of work applies, read in its own transaction (see
        :meth:`fresh`): a newer revision is used by the unit at once, and held by this
        process once the unit commits."""
        if repo.config_revision() <= self._current.revision:
            return self._current
        stored = _latest(repo)
        if stored is None or stored.revision <= self._current.revision:
            return self._current
        repo.after_commit(lambda: self._hold(stored))
        return stored

    def _adopt(self, repo: ConfigRepository) -> None:
        if repo.config_revision() > self._current.revision:
            stored = _latest(repo)
            if stored is not None:
                self._hold(stored)

    def _hold(self, stored: Config) -> None:
        if stored.revision > self._current.revision:
            self._current = stored

    def refresh(self) -> None:
        """Pick up a revision written by another replica (the newest revision is read and
        verified whole, so that a forged one is reported even when its number is not new)."""
        stored = _latest(self._store.read())
        if stored is not None:
            self._hold(stored)

    def get(self, principal: Principal) -> Config:
        principal.require(Permission.CONFIG_READ)
        self.refresh()
        return self._current

    async def update(
        self,
        principal: Principal,
        draft: ConfigDraft,
        mask: list[str],
        etag: str,
        user_id: str,
        reason: str,
    ) -> Config:
        principal.require(Permission.CONFIG_WRITE)
        violations = common(user_id, reason)
        text("etag", etag, MAX_ETAG, violations)
        raise_if(violations)

        def work(repo: Repository) -> Config:
            # Replicas may write the next revision at the same moment: the loser finds the
            # revision taken, and re-reads (the winner's commit is visible by then). With
            # an etag that is a stale etag; without one the change applies on top.
            while True:
                latest = _latest(repo) or self._current
                if etag and etag != latest.etag:
                    raise Aborted(
                        f"the configuration changed since etag {quote(etag)}; read it again "
                        f"(now {latest.etag}) and reapply your change",
                        reason="ETAG_MISMATCH",
                        metadata={"current_etag": latest.etag},
                    )
                now = self._clock.now()
                updated = dataclasses.replace(
                    apply_update(latest, draft, mask),
                    revision=latest.revision + 1,
                    update_time=now,
                    updated_by=principal.name,
                )
                if repo.put_config(_stored(updated, now)):
                    break
            self._journal.audit(
                repo,
                "config.update",
                about=Resource("config", str(updated.revision)),
                by=principal,
                user_id=user_id,
                reason=reason,
                details={
                    "update_mask": ",".join(mask) or "(implied)",
                    "previous_etag": latest.etag,
                    "etag": updated.etag,
                },
                time=now,
            )
            repo.after_commit(lambda: self._committed(updated))
            return updated

        return await self._store.write(work, principal.name)
