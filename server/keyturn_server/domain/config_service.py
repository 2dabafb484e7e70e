"""The stored, versioned configuration: read by everyone, changed only by admins,
validated whole before it is written, and audited."""

from __future__ import annotations

import dataclasses

from keyturn_server.clock import Clock
from keyturn_server.domain.access import SYSTEM, Permission, Principal
from keyturn_server.domain.audit import AuditDraft, AuditLog
from keyturn_server.domain.config import (
    Config,
    ConfigDraft,
    apply_update,
    config_from_json,
    config_to_json,
    default_config,
)
from keyturn_server.domain.errors import Aborted
from keyturn_server.domain.limits import common, raise_if
from keyturn_server.store.base import Store
from keyturn_server.store.sql import SqlRepository


def _latest(repo: SqlRepository) -> Config | None:
    found = repo.latest_config()
    if found is None:
        return None
    body, revision, update_time, updated_by = found
    return config_from_json(body, revision, update_time, updated_by)


class ConfigService:
    def __init__(self, store: Store, audit: AuditLog, clock: Clock) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._current = default_config()

    @property
    def current(self) -> Config:
        return self._current

    async def load(self) -> Config:
        """Read the stored configuration; on first start store the defaults as revision 1."""

        def work(repo: SqlRepository) -> Config:
            stored = _latest(repo)
            if stored is not None:
                return stored
            now = self._clock.now()
            initial = dataclasses.replace(
                default_config(), revision=1, update_time=now, updated_by=SYSTEM.name
            )
            repo.put_config(config_to_json(initial), 1, now, SYSTEM.name)
            self._audit.record(
                repo,
                now,
                AuditDraft(
                    "config.initialize",
                    SYSTEM.name,
                    SYSTEM.role.value,
                    "config",
                    "1",
                    details={"etag": initial.etag},
                ),
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

        def work(repo: SqlRepository) -> Config:
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
            repo.put_config(config_to_json(updated), updated.revision, now, principal.name)
            self._audit.record(
                repo,
                now,
                AuditDraft(
                    "config.update",
                    principal.name,
                    principal.role.value,
                    "config",
                    str(updated.revision),
                    user_id=user_id,
                    reason=reason,
                    peer=principal.peer,
                    details={
                        "update_mask": ",".join(mask) or "(implied)",
                        "previous_etag": latest.etag,
                        "etag": updated.etag,
                    },
                ),
            )
            repo.after_commit(lambda: setattr(self, "_current", updated))
            return updated

        return await self._store.write(work)
