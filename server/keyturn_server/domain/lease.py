"""The scheduler's lease: which replica may act on deadlines, and the fence every one of
its scheduled writes passes.

The lease is one stored row: an epoch that only grows and the replica holding it. Taking
it over writes the next epoch; a replica acts on a deadline only in a unit of work that
first reads the row *locked against a takeover* and finds its own epoch. A takeover's
write waits for those units, and they wait for it, so each scheduled write commits either
wholly before a takeover (and the new holder sees its effects) or after it, when its
epoch check fails and nothing of it is kept. Two replicas can hold the same epoch only if
one takeover wrote over another's without reading it, which the store forbids (the
takeover reads and writes the row under the same lock). Hence at most one replica's
scheduled writes commit between two takeovers, whatever either replica believes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Lease:
    """One term of leadership: ``epoch`` (the fencing token), who holds it, since when."""

    epoch: int
    holder: str
    since: datetime


class LeaseLost(Exception):
    """A scheduled write found that the lease it relied on was taken over: nothing of the
    write was kept, and the replica must stop acting on deadlines."""

    def __init__(self, mine: Lease, stored: Lease | None) -> None:
        held = f"epoch {stored.epoch} held by {stored.holder}" if stored else "no lease"
        super().__init__(f"the scheduler lease of epoch {mine.epoch} was superseded ({held})")
        self.mine = mine
        self.stored = stored


class LeaseRepository(Protocol):
    def scheduler_lease(self, *, lock: bool = False) -> Lease | None:
        """The lease as stored (None before anyone took it). With ``lock``, the row stays
        locked against a takeover until this unit of work ends."""
        ...

    def take_scheduler_lease(self, holder: str, now: datetime) -> Lease:
        """Supersede the stored lease: the next epoch, held by ``holder`` from ``now``."""
        ...


R = TypeVar("R", bound=LeaseRepository)


def check(repo: LeaseRepository, lease: Lease) -> None:
    """Inside a unit of work: raise LeaseLost unless ``lease`` is the stored lease, and
    hold the row against a takeover until the unit ends."""
    stored = repo.scheduler_lease(lock=True)
    if stored is None or stored.epoch != lease.epoch:
        raise LeaseLost(lease, stored)


def fenced(lease: Lease, work: Callable[[R], T]) -> Callable[[R], T]:
    """``work`` as a unit of work that first proves ``lease`` is still the stored one."""

    def unit(repo: R) -> T:
        check(repo, lease)
        return work(repo)

    return unit
