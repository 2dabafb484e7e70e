"""The Store protocol every backend implements, and the repository its units of work see.

The domain states what it needs from storage as one protocol per aggregate (the modules
beside this one); :class:`Repository` is all of them at once, which is what a unit of
work gets. Rows and columns never cross this line: the store maps them to and from the
domain's records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypeVar

from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain.errors import KeyturnError
from keyturn_server.domain.events import Event
from keyturn_server.domain.lease import LeaseRepository
from keyturn_server.domain.repositories.access_tokens import AccessTokenRepository
from keyturn_server.domain.repositories.audit import AuditRepository
from keyturn_server.domain.repositories.config import ConfigRepository
from keyturn_server.domain.repositories.deadlines import DeadlineQueue
from keyturn_server.domain.repositories.events import EventLog
from keyturn_server.domain.repositories.handles import AnomalyLog, HandleRepository
from keyturn_server.domain.repositories.keys import KeyRepository
from keyturn_server.domain.repositories.meta import MetaRepository, RowProtection
from keyturn_server.domain.repositories.sealed import SealedValues
from keyturn_server.domain.write_shares import WriteShares

if TYPE_CHECKING:
    from keyturn_server.clock import Clock
    from keyturn_server.domain.leadership import Leadership

T = TypeVar("T")

CommitListener = Callable[[list[Event]], None]


class Transaction(Protocol):
    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once this unit of work is durable (never if it is undone)."""
        ...


class Repository(
    HandleRepository,
    AnomalyLog,
    KeyRepository,
    EventLog,
    AuditRepository,
    AccessTokenRepository,
    DeadlineQueue,
    LeaseRepository,
    ConfigRepository,
    MetaRepository,
    SealedValues,
    RowProtection,
    Transaction,
    Protocol,
):
    """Everything a unit of work may read and change."""


@dataclass(frozen=True)
class StoreStatus:
    backend: str
    writable: bool
    last_commit: timedelta
    pending_writes: int
    schema_version: int
    problem: str = ""
    #: False while the database cannot be reached at all (then not writable either).
    reachable: bool = True
    #: Commits since start, and the units of work they made durable: writes per commit
    #: is the group-commit batch size (a coalesced batch of validations is one unit).
    commits: int = 0
    writes: int = 0


class Store(Protocol):
    backend: str
    #: Each named caller's share of the writer (domain/write_shares.py).
    write_shares: WriteShares

    def read(self) -> Repository:
        """A repository for reads on the calling (event loop) thread."""
        ...

    async def write(self, work: Callable[[Repository], T], caller: str = "") -> T:
        """Run ``work`` in one transaction and return its result once it is durable.

        ``work`` is plain synchronous code (the domain's rules); if it raises, nothing it
        did is kept. Events it appended reach the commit listeners after the commit and
        before this returns. Writes of one ``caller`` (a principal's name) wait for one
        of its places in ``write_shares`` first.
        """
        ...

    async def report(self, work: Callable[[Repository], T], caller: str = "") -> T:
        """Run a read that may scan (counts, statistics, listings with totals) on its own
        connection in a worker thread, so that it never blocks the event loop. Reports
        of one ``caller`` (a principal's name) take a bounded share of those threads."""
        ...

    def change_stamp(self) -> int | None:
        """A number that differs from the last one returned whenever anything was
        committed since (by this process or any other), as seen by :meth:`read`; None
        when the backend has no cheap local signal, and then nothing read may be cached
        across calls (key_cache.py). Take it *before* the read it vouches for."""
        ...

    def add_commit_listener(self, listener: CommitListener) -> None: ...

    def protect(self, protection: Protection) -> None:
        """Authenticate rows with these keys from now on (bootstrap, once the keyring
        is open): rows that grant rights carry a MAC, and a row whose MAC fails is
        treated as tampered."""
        ...

    def add_tamper_listener(self, listener: Callable[[str], None]) -> None:
        """Be told (with the table) of every tampered row a read finds."""
        ...

    def add_status_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) when ``status()`` may have changed: the
        database went away or came back, a commit failed or succeeded again."""
        ...

    def status(self) -> StoreStatus: ...

    def database_time(self) -> datetime | None:
        """The database server's own clock, where replicas share one (None: SQLite, on
        this host's clock; or the database cannot be read now)."""
        ...

    def check_schema(self) -> bool:
        """Look whether a newer Keyturn upgraded the database's schema since the start;
        if so, write nothing from now on (store/schema.py), and say so (True). Called
        every few seconds."""
        ...

    async def recheck_writes(self) -> None:
        """While writes fail for a reason that can pass (a full disk, a read-only or
        failing database), try one harmless write; if it goes through, the store says it
        is writable again. Called every few seconds: a server that says NOT_SERVING gets
        no calls from load balancers, so without it no write would ever find out."""
        ...

    def classify(self, exc: BaseException) -> KeyturnError | None:
        """What ``exc``, raised by a read or a write of this store anywhere (a servicer,
        the scheduler), means to a caller, when it is the store's own failure that the
        store has said in its log already (a damaged database file); else None."""
        ...

    def leadership(self, holder: str, clock: Clock) -> Leadership:
        """How this process learns whether it runs the scheduler (``holder`` names it)."""
        ...

    def start(self) -> None:
        """Begin background work (called once the event loop runs)."""
        ...

    async def close(self) -> None: ...
