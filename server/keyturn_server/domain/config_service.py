"""The stored, versioned configuration: read by everyone, changed only by admins,
validated whole before it is written, and audited."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from keyturn_server.clock import Clock
from keyturn_server.domain.access import SYSTEM, Permission, Principal
from keyturn_server.domain.config import (
    Config,
    config_from_json,
    config_to_json,
    default_config,
)
from keyturn_server.domain.config_update import ConfigDraft, apply_update
from keyturn_server.domain.errors import Aborted
from keyturn_server.domain.journal import Journal, Resource
from keyturn_server.domain.limits import common, raise_if
from keyturn_server.domain.repositories import ConfigRepository, Repository, Store, StoredConfig


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
            repo.put_config(_stored(initial, now))
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

    def refresh(self) -> None:
        """Pick up a revision written by another replica."""
        stored = _latest(self._store.read())
        if stored is not None and stored.revision > self._current.revision:
            self._current = stored

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
        raise_if(common(user_id, reason))

        def work(repo: Repository) -> Config:
            latest = _latest(repo) or self._current
            if etag and etag != latest.etag:
                raise Aborted(
                    f"the configuration changed since etag {etag}; read it again "
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
            repo.put_config(_stored(updated, now))
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
            repo.after_commit(lambda: setattr(self, "_current", updated))
            return updated

        return await self._store.write(work)
