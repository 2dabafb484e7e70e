"""The store's clock floor: the latest time a server of this store reached.

:class:`~keyturn_server.clock.SystemClock` keeps a process's time from running backward
when the system clock is stepped back; this keeps it across a restart. A host that comes
back with its clock behind (a hardware clock that drifted while it was off, a virtual
machine restored from a snapshot) would otherwise start every server at the earlier
time, and every live handle and key version would have that much more to live. Each
process that leads the scheduler raises the floor once a minute and as it stops, and
every process tells its clock at start not to give a time before it; so a restart loses
at most a minute of it. Only the leader raises it: its clock is the one the scheduler's
expiries and rotations already follow, and a replica whose clock runs hours ahead would
otherwise move every replica that restarts after it hours ahead too.

The floor carries a MAC, as the audit log's anchor does. Forged far ahead, it would move
the server's time there: the scheduler would expire every handle and destroy every
removed key past its delay. A floor that fails authentication is reported and ignored.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from keyturn_server.clock import Clock
from keyturn_server.domain.leadership import Leadership
from keyturn_server.domain.repositories import Store

log = logging.getLogger("keyturn.clock")
#: Seconds between raises of the floor by each serving process.
EVERY = 60.0


#: A start this far past the floor is said in the log: the server was stopped that long,
#: or the host's clock is wrong, and what fell due in between is acted on at once.
SAY_GAP = timedelta(hours=1)


def restore(store: Store, clock: Clock) -> None:
    """Tell ``clock`` the store's floor (after the keyring is open: the floor has a MAC)."""
    floor = store.read().clock_floor()
    if floor is None:
        return
    clock.not_before(floor)
    gap = clock.now() - floor
    if gap > SAY_GAP:
        log.warning(
            "the system clock is %s past the latest time this store recorded (%s): the "
            "server was stopped that long, or the clock is wrong. Expiries, rotations and "
            "destructions due in between are acted on now; if the clock is wrong, stop the "
            "server and set it right first",
            gap,
            floor.isoformat(),
            extra={"category": "error", "seconds": round(gap.total_seconds())},
        )


async def save(store: Store, clock: Clock, leadership: Leadership) -> None:
    """Raise the store's floor to the clock's time, if this process leads."""
    if leadership.lease() is None:
        return
    now = clock.now()
    await store.write(lambda repo: repo.raise_clock_floor(now))
