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
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from keyturn_server.clock import Clock
from keyturn_server.domain.access import SYSTEM
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.deadlines import DeadlineKind, Due, SecretRef, VersionRef
from keyturn_server.domain.errors import DataLoss
from keyturn_server.domain.handle_lifecycle import HandleLifecycle
from keyturn_server.domain.key_lifecycle import KeyLifecycle
from keyturn_server.domain.keys import KeyState
from keyturn_server.domain.repositories import Repository, Store

log = logging.getLogger("keyturn.scheduler")

BATCH = 100
K = DeadlineKind
#: Order matters: rotation replaces a primary before its expiry is considered, and a
#: handle at the end of its life expires rather than rotating once more.
KINDS = (
    K.KEY_ROTATE,
    K.KEY_EXPIRE,
    K.VERSION_EXPIRE,
    K.KEY_NOTIFY,
    K.KEY_DESTROY,
    K.HANDLE_EXPIRE,
    K.HANDLE_ROTATE,
    K.HANDLE_NOTIFY,
    K.SECRET_GRACE,
)


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: ConfigService,
        keys: KeyLifecycle,
        handles: HandleLifecycle,
        retention: timedelta,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._keys = keys
        self._handles = handles
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

    def _kinds(self) -> list[DeadlineKind]:
        enforce = self._config.current.policies.enforce_rotation
        return [k for k in KINDS if enforce or not k.is_rotation]

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
            due = reader.due(kind, now, BATCH)
            overdue += len(due)
            if due and await self._act_on(kind, due, now):
                did = True
        self.overdue = overdue
        oldest = reader.oldest_event_time()
        if oldest is not None and oldest + self.retention <= now:
            await self._store.write(lambda repo: repo.prune_events(now - self.retention))
        self.passes += 1
        return did

    async def _act_on(self, kind: DeadlineKind, due: list[Due], now: datetime) -> bool:
        """Act on due items; True if any was acted on (a step that finds its condition
        no longer true skips the item)."""
        if kind in (K.KEY_ROTATE, K.KEY_EXPIRE):
            acted = [await self._rotate_or_expire_key(str(key_id), now) for key_id in due]
            return any(acted)

        def work(repo: Repository) -> bool:
            return any([self._step(repo, kind, item, now) for item in due])

        return await self._store.write(work)

    def _step(self, repo: Repository, kind: DeadlineKind, item: Due, now: datetime) -> bool:
        try:
            return self._act(repo, kind, item, now)
        except DataLoss:
            # Its stored row failed authentication before anything was changed; the
            # store reported it and keeps it from the next passes. The others go on.
            return False

    def _act(self, repo: Repository, kind: DeadlineKind, item: Due, now: datetime) -> bool:
        match kind, item:
            case K.VERSION_EXPIRE, VersionRef():
                return self._keys.expire_version(repo, item, now)
            case K.SECRET_GRACE, SecretRef():
                return self._handles.end_grace(repo, item, now)
            case K.KEY_NOTIFY, str():
                return self._keys.warn(repo, item, now)
            case K.KEY_DESTROY, str():
                return self._keys.destroy(repo, item, now)
            case K.HANDLE_EXPIRE, str():
                return self._handles.expire(repo, item, now)
            case K.HANDLE_ROTATE, str():
                return self._handles.rotate_due(repo, item, now)
            case K.HANDLE_NOTIFY, str():
                return self._handles.warn(repo, item, now)
        raise AssertionError(f"no step for {kind} {item!r}")

    async def _rotate_or_expire_key(self, key_id: str, now: datetime) -> bool:
        """Keys rotate (or expire) in a unit of work of their own: new material is made
        first, outside it."""
        try:
            key = self._store.read().get_key(key_id)
        except DataLoss:
            return False  # reported by the store, and kept from the next passes
        if key is None or key.state is not KeyState.ACTIVE:
            return False
        enforce = self._config.current.policies.enforce_rotation
        rotation_due = key.next_rotation_time is not None and key.next_rotation_time <= now
        if enforce and (rotation_due or key.expire_time <= now):
            secret, pem = await self._keys.maker.make(key.algorithm, key.key_length, None)

            def rotate(repo: Repository) -> bool:
                current = repo.get_key(key_id, for_update=True)
                if current is None or current.state is not KeyState.ACTIVE:
                    return False
                if current.primary_version != key.primary_version:
                    return False  # rotated meanwhile
                why = "scheduled" if rotation_due else "primary expired"
                self._keys.add_primary(
                    repo, current, secret=secret, public_pem=pem, by=SYSTEM, user_id="", reason=why
                )
                return True

            return await self._store.write(rotate)
        if key.expire_time <= now:
            return await self._store.write(lambda repo: self._keys.expire(repo, key_id, now))
        return False
