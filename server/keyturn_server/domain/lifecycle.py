"""The scheduler: warnings, rotations, expiries and destruction, at their deadlines; and
the purge of events, of ended handles and of audit entries past their retention.

It asks the store for the earliest due deadline of each kind (an indexed lookup, so its
cost does not grow with the number of records), sleeps on the injected clock until then
or until a change may have moved a deadline earlier, and handles what is due in small
transactions. Each handler re-checks its condition inside the transaction, so a
deadline is acted on exactly once even if two passes race.

Work missed while no scheduler ran (the server was down, or replicas were between
leaders) is caught up in deadline order across every kind, one deadline at a time: a
handle whose warning and rotation both passed gets its EXPIRING warning and then its
ROTATED, as it would have on time. Each deadline is acted on as of now (a late rotation
issues a secret that lives a full interval from now); a rotation whose record has since
reached its end of life is not made, the record expires instead.

Only the replica holding the scheduler's lease acts, and every write it makes is fenced
by the lease (domain/lease.py): a replica that lost the lease without noticing cannot
act, its write fails with LeaseLost and it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TypeVar

from keyturn_server.clock import Clock
from keyturn_server.domain.access import SYSTEM
from keyturn_server.domain.audit_retention import AuditRetention
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.deadlines import DeadlineKind, Overdue, SecretRef, VersionRef
from keyturn_server.domain.errors import DataLoss, Unavailable
from keyturn_server.domain.handle_lifecycle import HandleLifecycle
from keyturn_server.domain.key_lifecycle import KeyLifecycle
from keyturn_server.domain.keys import KeyState
from keyturn_server.domain.leadership import Leadership
from keyturn_server.domain.lease import Lease, LeaseLost, fenced
from keyturn_server.domain.repositories import Repository, Store

log = logging.getLogger("keyturn.scheduler")

T = TypeVar("T")
BATCH = 100
#: Ended handles deleted per transaction (each deletion updates the handles' indexes).
PURGE_BATCH = 200
#: How long a replica that does not lead sleeps when nothing wakes it: it is woken when
#: it gains the lease, so this is only a backstop.
IDLE = timedelta(seconds=30)
K = DeadlineKind
#: Order among deadlines at the same instant: rotation replaces a primary before its
#: expiry is considered, and a handle at the end of its life expires rather than
#: rotating once more.
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
_RANK = {kind: rank for rank, kind in enumerate(KINDS)}
#: Key rotation makes new material outside the unit of work, so each is a unit alone.
_ALONE = (K.KEY_ROTATE, K.KEY_EXPIRE)
#: The most deadlines acted on in one unit of work, for two reasons found apart:
#: - a unit runs on the event loop and nothing else is served while it does: a handle's
#:   rotation costs about a millisecond (two seals, a digest, an event and a chained
#:   audit entry), so a catch-up of thousands in units of a whole batch held every
#:   validation for a hundred milliseconds and more;
#: - a unit holds its rows, and from its first event the store's append lock, until it
#:   commits: a hundred rotations in one held them for most of a second under load, and
#:   on PostgreSQL every other write that journals (GenerateHandle, a refused
#:   validation...) waited behind it, past the lock timeout now and then (STORE_LOCKED).
#: Each unit commits on its own, or with the calls that arrived meanwhile.
UNIT = 16


def in_deadline_order(batches: list[list[Overdue]], limit: int) -> list[Overdue]:
    """Merge each kind's earliest due deadlines (at most ``limit`` per kind) into one
    list in deadline order. A kind that filled its batch may have more due after its
    last item, so nothing later than the earliest such last item is taken this time."""
    horizon = min((b[-1].time for b in batches if len(b) >= limit), default=None)
    found = [i for b in batches for i in b if horizon is None or i.time <= horizon]
    return sorted(found, key=lambda i: (i.time, _RANK[i.kind]))


def in_units(items: list[Overdue]) -> Iterator[list[Overdue]]:
    """Consecutive deadlines that share one unit of work (at most UNIT), in order."""
    unit: list[Overdue] = []
    for item in items:
        if item.kind in _ALONE:
            if unit:
                yield unit
                unit = []
            yield [item]
            continue
        unit.append(item)
        if len(unit) == UNIT:
            yield unit
            unit = []
    if unit:
        yield unit


#: Deadlines whose reference is a key id (the other ids name handles).
_NAMES_A_KEY = (K.KEY_ROTATE, K.KEY_EXPIRE, K.KEY_NOTIFY, K.KEY_DESTROY)


def _lock_all(repo: Repository, unit: list[Overdue]) -> None:
    """Lock every key and handle the unit acts on, before it acts on any. Taken one by one
    in deadline order, with events appended in between, they deadlocked with validations
    (which lock theirs in id order, then append) on PostgreSQL: both waited until the
    lock timeout, and every validation was refused STORE_LOCKED for a second after."""
    keys: list[str] = []
    handles: list[str] = []
    for item in unit:
        match item.ref:
            case VersionRef(key_id=key_id):
                keys.append(key_id)
            case SecretRef(handle_id=handle_id):
                handles.append(handle_id)
            case str(record) if item.kind in _NAMES_A_KEY:
                keys.append(record)
            case str(record):
                handles.append(record)
    repo.lock_keys(keys)
    repo.lock_handles(handles)


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: ConfigService,
        keys: KeyLifecycle,
        handles: HandleLifecycle,
        retention: timedelta,
        leadership: Leadership,
        handle_retention: timedelta | None = None,
        audit: AuditRetention | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._keys = keys
        self._handles = handles
        self.retention = retention
        #: How long handles that ended are kept past the end of their maximum lifetime
        #: (None: for ever). A busy service issues millions of short-lived handles; kept
        #: for ever, they fill the disk and slow every count over them.
        self.handle_retention = handle_retention
        self.audit = audit
        self.leadership = leadership
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.lag = timedelta(0)
        self.overdue = 0
        self.next_deadline: datetime | None = None
        self.passes = 0
        self.failures = 0
        leadership.on_change(self.poke)

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
        """Something changed: deadlines may have moved earlier, or the lease changed."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.settle()
            except asyncio.CancelledError:
                raise
            except Unavailable as exc:  # the store says so itself, once, when it goes
                log.debug("scheduler pass skipped: %s", exc.message)
                self.failures += 1
                await asyncio.sleep(1)
            except Exception as exc:
                self.failures += 1
                if self._store.classify(exc) is None:  # else the store has said it, once
                    log.exception("scheduler pass failed", extra={"category": "error"})
                await asyncio.sleep(1)
            # A revision that fails authentication (DATA_LOSS) is reported where it is
            # read, and refused to callers; the scheduler goes on with the configuration
            # it holds. (It used to end here, and schedule nothing until a restart.)
            with contextlib.suppress(Unavailable, DataLoss):
                self._config.refresh()
            deadline = self.next_deadline
            if deadline is None or self.leadership.lease() is None:
                deadline = self._clock.now() + IDLE
            await self._clock.sleep_until(deadline, self._wake)

    async def settle(self) -> None:
        """Handle everything due at the clock's current time; return when nothing is.
        A replica that does not hold the lease does nothing."""
        lease = self.leadership.lease()
        if lease is None:
            return
        async with self._lock:
            try:
                while await self._pass(lease):
                    pass
            except LeaseLost as lost:
                log.warning(
                    "scheduler lease lost; this replica stopped scheduling",
                    extra={"category": "error", "problem": str(lost)},
                )
                self.leadership.lost(lease)
                return
            self.next_deadline = self._next_deadline()

    def kinds(self) -> list[DeadlineKind]:
        """The kinds acted on under the current policies."""
        enforce = self._config.current.policies.enforce_rotation
        return [k for k in KINDS if enforce or not k.is_rotation]

    def observe(self, now: datetime) -> tuple[timedelta, datetime | None]:
        """(age of the oldest overdue deadline, earliest deadline), read live from the
        store: the same on every replica, whoever leads, and growing when nobody does."""
        earliest = self._next_deadline()
        if earliest is None or earliest > now:
            return timedelta(0), earliest
        return now - earliest, earliest

    def _next_deadline(self) -> datetime | None:
        reader = self._store.read()
        times = [d.time for d in reader.next_deadlines(self.kinds())]
        oldest = reader.oldest_event_time()
        if oldest is not None:
            times.append(oldest + self.retention)
        if self.handle_retention is not None:
            ended = reader.oldest_ended_handle()
            if ended is not None:
                times.append(ended + self.handle_retention)
        if self.audit is not None and (pruning := self.audit.deadline(reader)) is not None:
            times.append(pruning)
        return min(times) if times else None

    async def _write(self, lease: Lease, work: Callable[[Repository], T]) -> T:
        return await self._store.write(fenced(lease, work))

    async def _pass(self, lease: Lease) -> bool:
        """One sweep, in deadline order; True when it did something (sweep again)."""
        now = self._clock.now()
        reader = self._store.read()
        batches = [reader.due(kind, now, BATCH) for kind in self.kinds()]
        items = in_deadline_order(batches, BATCH)
        self.overdue = sum(len(b) for b in batches)
        self.lag = now - items[0].time if items else timedelta(0)
        did = False
        for unit in in_units(items):
            if await self._act_on(lease, unit, now):
                did = True
        oldest = reader.oldest_event_time()
        if oldest is not None and oldest + self.retention <= now:
            await self._write(lease, lambda repo: repo.prune_events(now - self.retention))
        if await self._purge_handles(lease, reader, now):
            did = True
        if await self._prune_audit(lease, reader, now):
            did = True
        self.passes += 1
        return did

    async def _purge_handles(self, lease: Lease, reader: Repository, now: datetime) -> bool:
        """Delete one batch of handles ended longer than the retention ago; True when the
        batch was full (sweep again: the rest goes in further batches, between which
        calls are served)."""
        if self.handle_retention is None:
            return False
        ended = reader.oldest_ended_handle()
        if ended is None or ended + self.handle_retention > now:
            return False
        before = now - self.handle_retention
        purged = await self._write(lease, lambda repo: repo.purge_handles(before, PURGE_BATCH))
        if purged:
            log.info(
                "purged handles that ended before the retention",
                extra={"category": "scheduler", "count": purged, "ended_before": before},
            )
        return purged == PURGE_BATCH

    async def _prune_audit(self, lease: Lease, reader: Repository, now: datetime) -> bool:
        """Prune one batch of the audit log past its retention; True when there may be
        more (sweep again)."""
        audit = self.audit
        if audit is None or not audit.due(reader, now):
            return False
        pruned = await self._write(lease, lambda repo: audit.prune(repo, now))
        if pruned is None:
            return False
        log.info(
            "pruned audit entries older than the retention",
            extra={
                "category": "scheduler",
                "count": pruned.count,
                "through_sequence": pruned.through,
                "cutoff": pruned.before,
            },
        )
        return True

    async def _act_on(self, lease: Lease, unit: list[Overdue], now: datetime) -> bool:
        """Act on due items in order; True if any was acted on (a step that finds its
        condition no longer true skips the item)."""
        if unit[0].kind in _ALONE:
            return await self._rotate_or_expire_key(lease, str(unit[0].ref), now)

        def work(repo: Repository) -> bool:
            _lock_all(repo, unit)
            return any([self._step(repo, item, now) for item in unit])

        return await self._write(lease, work)

    def _step(self, repo: Repository, item: Overdue, now: datetime) -> bool:
        try:
            return self._act(repo, item, now)
        except DataLoss:
            # Its stored row failed authentication before anything was changed; the
            # store reported it and keeps it from the next passes. The others go on.
            return False

    def _act(self, repo: Repository, item: Overdue, now: datetime) -> bool:
        match item.kind, item.ref:
            case K.VERSION_EXPIRE, VersionRef() as ref:
                return self._keys.expire_version(repo, ref, now)
            case K.SECRET_GRACE, SecretRef() as ref:
                return self._handles.end_grace(repo, ref, now)
            case K.KEY_NOTIFY, str(key_id):
                return self._keys.warn(repo, key_id, now)
            case K.KEY_DESTROY, str(key_id):
                return self._keys.destroy(repo, key_id, now)
            case K.HANDLE_EXPIRE, str(handle_id):
                return self._handles.expire(repo, handle_id, now)
            case K.HANDLE_ROTATE, str(handle_id):
                return self._handles.rotate_due(repo, handle_id, now)
            case K.HANDLE_NOTIFY, str(handle_id):
                return self._handles.warn(repo, handle_id, now)
        raise AssertionError(f"no step for {item!r}")

    async def _rotate_or_expire_key(self, lease: Lease, key_id: str, now: datetime) -> bool:
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

            return await self._write(lease, rotate)
        if key.expire_time <= now:
            return await self._write(lease, lambda repo: self._keys.expire(repo, key_id, now))
        return False
