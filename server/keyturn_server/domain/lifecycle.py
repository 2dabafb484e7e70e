"""The scheduler: warnings, rotations, expiries and destruction, at their deadlines.

It asks the store for the earliest due deadline of each kind (an indexed lookup, so its
cost does not grow with the number of records), sleeps on the injected clock until then
or until a change may have moved a deadline earlier, and handles what is due in small
transactions. Each handler re-checks its condition inside the transaction, so a
deadline is acted on exactly once even if two passes (or two replicas) race, and work
missed while the server was down is done at the first pass after start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from keyturn_server.clock import Clock
from keyturn_server.crypto import material
from keyturn_server.domain.access import SYSTEM
from keyturn_server.domain.audit import AuditLog
from keyturn_server.domain.configuration import ConfigService
from keyturn_server.domain.events import EventKind
from keyturn_server.domain.handle_service import HandleService
from keyturn_server.domain.handles import Handle, HandleState
from keyturn_server.domain.key_service import KeyService
from keyturn_server.domain.keys import KeyState, VersionState, warning_deadline
from keyturn_server.store.base import Store
from keyturn_server.store.sql import SqlRepository

log = logging.getLogger("keyturn.scheduler")

BATCH = 100
#: Order matters: rotation replaces a primary before its expiry is considered, and a
#: handle at the end of its life expires rather than rotating once more.
KINDS = (
    "key.rotate",
    "key.expire",
    "version.expire",
    "key.notify",
    "key.destroy",
    "handle.expire",
    "handle.rotate",
    "handle.notify",
    "secret.grace",
)
_NEEDS_ENFORCEMENT = {"key.rotate", "handle.rotate"}


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: ConfigService,
        keys: KeyService,
        handles: HandleService,
        audit: AuditLog,
        retention: timedelta,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._keys = keys
        self._handles = handles
        self._audit = audit
        self.retention = retention
        self._is_leader = is_leader
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.lag = timedelta(0)
        self.overdue = 0
        self.next_deadline: datetime | None = None
        self.passes = 0
        self.failures = 0

    # --- running -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="keyturn-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def poke(self, *_: object) -> None:
        """Something changed: deadlines may have moved earlier."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.settle()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("scheduler pass failed", extra={"category": "error"})
                await asyncio.sleep(1)
            self._config.refresh()
            deadline = self.next_deadline
            if deadline is None or not self._is_leader():
                deadline = self._clock.now() + timedelta(seconds=30)
            await self._clock.sleep_until(deadline, self._wake)

    async def settle(self) -> None:
        """Handle everything due at the clock's current time; return when nothing is.
        A replica that does not lead does nothing."""
        if not self._is_leader():
            return
        async with self._lock:
            while await self._pass():
                pass
            self.next_deadline = self._next_deadline()

    def _kinds(self) -> list[str]:
        enforce = self._config.current.policies.enforce_rotation
        return [k for k in KINDS if enforce or k not in _NEEDS_ENFORCEMENT]

    def observe(self, now: datetime) -> tuple[timedelta, datetime | None]:
        """(lag, earliest deadline) read live from the store: a stuck scheduler shows
        its lag growing even though it is not running passes."""
        earliest = self._next_deadline()
        if earliest is None or earliest > now:
            return timedelta(0), earliest
        return now - earliest, earliest

    def _next_deadline(self) -> datetime | None:
        reader = self._store.read()
        times = [d.time for d in reader.next_deadlines(self._kinds())]
        oldest = reader.oldest_event_time()
        if oldest is not None:
            times.append(oldest + self.retention)
        return min(times) if times else None

    async def _pass(self) -> bool:
        """One sweep over every kind; True when it did something (sweep again)."""
        now = self._clock.now()
        reader = self._store.read()
        due_times = [d.time for d in reader.next_deadlines(self._kinds()) if d.time <= now]
        self.lag = now - min(due_times) if due_times else timedelta(0)
        did = False
        overdue = 0
        for kind in self._kinds():
            ids = reader.due(kind, now, BATCH)
            overdue += len(ids)
            if ids and await self._handle(kind, ids, now):
                did = True
        self.overdue = overdue
        oldest = reader.oldest_event_time()
        if oldest is not None and oldest + self.retention <= now:
            await self._store.write(lambda repo: repo.prune_events(now - self.retention))
        self.passes += 1
        return did

    async def _handle(self, kind: str, ids: list[str], now: datetime) -> bool:
        """Act on due items; True if any was acted on (a handler that finds its
        condition no longer true skips the item)."""
        if kind == "key.rotate" or kind == "key.expire":
            acted = [await self._rotate_or_expire_key(key_id, now) for key_id in ids]
            return any(acted)
        handler: Callable[[SqlRepository, str, datetime], bool] = {
            "version.expire": self._expire_version,
            "key.notify": self._notify_key,
            "key.destroy": self._destroy_key,
            "handle.expire": self._expire_handle,
            "handle.rotate": self._rotate_handle,
            "handle.notify": self._notify_handle,
            "secret.grace": self._end_grace,
        }[kind]

        def work(repo: SqlRepository) -> bool:
            return any([handler(repo, item, now) for item in ids])

        return await self._store.write(work)

    # --- keys --------------------------------------------------------------------------

    async def _rotate_or_expire_key(self, key_id: str, now: datetime) -> bool:
        key = self._store.read().get_key(key_id)
        if key is None or key.state is not KeyState.ACTIVE:
            return False
        enforce = self._config.current.policies.enforce_rotation
        rotation_due = key.next_rotation_time is not None and key.next_rotation_time <= now
        if enforce and (rotation_due or key.expire_time <= now):
            secret, pem = await asyncio.to_thread(material.generate, key.algorithm, key.key_length)

            def rotate(repo: SqlRepository) -> bool:
                current = repo.get_key(key_id, for_update=True)
                if current is None or current.state is not KeyState.ACTIVE:
                    return False
                if current.primary_version != key.primary_version:
                    return False  # rotated meanwhile
                why = "scheduled" if rotation_due else "primary expired"
                self._keys.add_primary(repo, current, secret, pem, SYSTEM, "", why)
                return True

            return await self._store.write(rotate)
        if key.expire_time <= now:

            def expire(repo: SqlRepository) -> bool:
                current = repo.get_key(key_id, for_update=True)
                if current is None or current.state is not KeyState.ACTIVE:
                    return False
                if current.expire_time > now:
                    return False
                expired = dataclasses.replace(current, state=KeyState.EXPIRED, notify_time=None)
                repo.update_key(expired)
                self._keys.event(
                    repo,
                    EventKind.EXPIRED,
                    expired,
                    "max lifetime reached",
                    expired.expire_time,
                    expired.primary_version,
                )
                self._keys.record(
                    repo, now, SYSTEM, "key.expire", expired, "", "max lifetime reached", {}
                )
                return True

            return await self._store.write(expire)
        return False

    def _expire_version(self, repo: SqlRepository, item: str, now: datetime) -> bool:
        key_id, number = item.split(" ")
        key = repo.get_key(key_id, for_update=True)
        version = key.version(int(number)) if key else None
        if key is None or version is None or version.state is not VersionState.ENABLED:
            return False
        if version.expire_time > now:
            return False
        repo.update_version(
            dataclasses.replace(version, state=VersionState.EXPIRED, destroy_time=now)
        )
        repo.destroy_material(key_id, version.version)
        repo.after_commit(lambda: self._keys.forget_version(key_id, version.version))
        updated = repo.get_key(key_id)
        assert updated is not None
        self._keys.event(
            repo,
            EventKind.EXPIRED,
            updated,
            f"version {version.version} reached its max lifetime; material destroyed",
            version.expire_time,
            version.version,
        )
        self._keys.record(
            repo,
            now,
            SYSTEM,
            "key.version.expire",
            updated,
            "",
            "max lifetime reached",
            {"version": str(version.version)},
        )
        return True

    def _notify_key(self, repo: SqlRepository, key_id: str, now: datetime) -> bool:
        key = repo.get_key(key_id, for_update=True)
        if key is None or key.state is not KeyState.ACTIVE:
            return False
        if key.notify_time is None or key.notify_time > now:
            return False
        deadline = warning_deadline(key, now)
        again: datetime | None = None
        if not self._config.current.policies.enforce_rotation and deadline < key.expire_time:
            again = key.expire_time - key.schedule.warning_threshold
        repo.update_key(dataclasses.replace(key, notify_time=again))
        kind = "rotation" if deadline < key.expire_time else "expiry"
        self._keys.event(
            repo,
            EventKind.EXPIRING,
            key,
            f"{kind} at {deadline.isoformat()}",
            deadline,
            key.primary_version,
        )
        return True

    def _destroy_key(self, repo: SqlRepository, key_id: str, now: datetime) -> bool:
        key = repo.get_key(key_id, for_update=True)
        if key is None or key.state is not KeyState.REMOVED:
            return False
        if key.destroy_time is None or key.destroy_time > now:
            return False
        versions = []
        for version in key.versions:
            repo.destroy_material(key_id, version.version)
            done = dataclasses.replace(
                version, state=VersionState.DESTROYED, destroy_time=version.destroy_time or now
            )
            repo.update_version(done)
            versions.append(done)
        destroyed = dataclasses.replace(
            key,
            state=KeyState.DESTROYED,
            restore_state=None,
            next_rotation_time=None,
            notify_time=None,
            versions=tuple(versions),
        )
        repo.update_key(destroyed)
        repo.after_commit(lambda: self._keys.forget(key_id))
        self._keys.event(
            repo, EventKind.DESTROYED, destroyed, "waiting period over", key.destroy_time, 0
        )
        self._keys.record(
            repo, now, SYSTEM, "key.destroy", destroyed, "", "waiting period over", {}
        )
        return True

    def _expire_handle(self, repo: SqlRepository, handle_id: str, now: datetime) -> bool:
        handle = repo.get_handle(handle_id, for_update=True)
        if handle is None or handle.state not in (HandleState.ACTIVE, HandleState.EXHAUSTED):
            return False
        if handle.expire_time > now:
            return False
        expired = dataclasses.replace(handle, state=HandleState.EXPIRED, notify_time=None)
        repo.update_handle(expired)
        self._clear_successors(repo, expired, now)
        self._handles.event(
            repo, EventKind.EXPIRED, expired, "max lifetime reached", expired.expire_time
        )
        return True

    def _rotate_handle(self, repo: SqlRepository, handle_id: str, now: datetime) -> bool:
        handle = repo.get_handle(handle_id, for_update=True)
        if handle is None or handle.state is not HandleState.ACTIVE:
            return False
        if handle.rotate_time > now or handle.expire_time <= now:
            return False
        if handle.rotate_time >= handle.expire_time:
            return False
        self._handles.rotate_in(repo, handle, SYSTEM, "", "scheduled", deliver=True)
        return True

    def _notify_handle(self, repo: SqlRepository, handle_id: str, now: datetime) -> bool:
        handle = repo.get_handle(handle_id, for_update=True)
        if handle is None or handle.state is not HandleState.ACTIVE:
            return False
        if handle.notify_time is None or handle.notify_time > now:
            return False
        rotating = handle.rotate_time > now and handle.rotate_time < handle.expire_time
        deadline = handle.rotate_time if rotating else handle.expire_time
        again: datetime | None = None
        if rotating and not self._config.current.policies.enforce_rotation:
            again = handle.expire_time - handle.schedule.warning_threshold
            again = again if again > now else None
        repo.update_handle(dataclasses.replace(handle, notify_time=again))
        what = "rotation" if rotating else "expiry"
        self._handles.event(
            repo, EventKind.EXPIRING, handle, f"{what} at {deadline.isoformat()}", deadline
        )
        return True

    def _end_grace(self, repo: SqlRepository, item: str, now: datetime) -> bool:
        handle_id, generation = item.split(" ")
        for secret in repo.secrets_of(handle_id):
            if (
                secret.generation == int(generation)
                and secret.sealed_token is not None
                and secret.grace_until is not None
                and secret.grace_until <= now
            ):
                repo.update_secret(dataclasses.replace(secret, sealed_token=None))
                repo.clear_sealed_event_tokens(handle_id, secret.superseded_time or now)
        return True

    def _clear_successors(self, repo: SqlRepository, handle: Handle, now: datetime) -> None:
        for secret in repo.secrets_of(handle.id):
            if secret.sealed_token is not None:
                repo.update_secret(dataclasses.replace(secret, sealed_token=None))
        repo.clear_sealed_event_tokens(handle.id, now)
