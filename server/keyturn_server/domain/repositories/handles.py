"""Handles with their secrets, and the anomalies seen on them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from keyturn_server.domain.anomalies import Anomaly
from keyturn_server.domain.handles import Handle, HandleSecret, HandleStatus
from keyturn_server.domain.paging import Cursor, Listing


class HandleRepository(Protocol):
    def get_handle(self, handle_id: str, for_update: bool = False) -> Handle | None:
        """``for_update``: the unit of work goes on to change it (locked where writers
        run concurrently)."""
        ...

    def lock_handles(self, handle_ids: Sequence[str]) -> None:
        """Lock these handles' rows in id order, where writers run concurrently: a unit of
        work that changes several takes them all before anything else, in the order
        validations take theirs. One that took them one by one, appending events in
        between (the append lock), could deadlock with a validation of two of them."""
        ...

    def insert_handle(self, handle: Handle) -> None: ...

    def update_handle(self, before: Handle, after: Handle) -> None:
        """Store ``after`` over ``before`` (as read in this unit of work): only what
        changed is written."""
        ...

    def count_active_handles(self, owner: str, now: datetime, lock: bool = False) -> int:
        """``lock``: the unit of work goes on to issue one if there is room; units doing
        so for the same owner run one after another (where writers run concurrently),
        since each would otherwise count before the other's handle is there."""
        ...

    def earliest_active_expiry(self, owner: str, now: datetime) -> datetime | None:
        """When the first of ``owner``'s active handles expires (a slot frees)."""
        ...

    def secrets_with_handles(
        self, digests: Sequence[bytes]
    ) -> dict[bytes, tuple[HandleSecret, Handle]]:
        """The secrets with these digests, each with its handle (locked for update)."""
        ...

    def secrets_with_free_handles(
        self, digests: Sequence[bytes]
    ) -> tuple[dict[bytes, tuple[HandleSecret, Handle]], set[bytes]]:
        """As :meth:`secrets_with_handles`, without waiting for a handle that another
        transaction holds: the digests of secrets whose handle is busy come back apart
        (never any where one writer runs at a time)."""
        ...

    def get_secret(self, digest: bytes) -> HandleSecret | None: ...

    def secrets_of(self, handle_id: str) -> list[HandleSecret]:
        """Every secret of a handle, by generation."""
        ...

    def live_secrets_of(self, handle_id: str, generation: int, now: datetime) -> list[HandleSecret]:
        """The secrets of a handle that a rotation or the end of a grace may still
        change, by generation: ``generation``'s, those in their grace at ``now`` and
        those holding a sealed successor. Not the ended ones, which every rotation kept
        adding to (a handle keeps all its secrets, to recognise reuse)."""
        ...

    def insert_secret(self, secret: HandleSecret) -> None: ...

    def update_secret(self, secret: HandleSecret) -> None: ...

    def list_handles(
        self,
        now: datetime,
        type_name: str,
        status: HandleStatus | None,
        owner: str,
        after: Cursor | None,
        limit: int,
        total: int | None = None,
    ) -> Listing[Handle]:
        """One page; the total across pages is counted unless ``total`` is given."""
        ...

    def handle_counts(self, now: datetime) -> list[tuple[str, str, int, int, int]]:
        """(type, status, count, total usage, highest usage) per type and status."""
        ...

    def oldest_ended_handle(self) -> datetime | None:
        """The earliest maximum-lifetime end of a handle that ended (expired, exhausted
        or revoked); None when none did."""
        ...

    def purge_handles(self, ended_before: datetime, limit: int) -> int:
        """Delete at most ``limit`` ended handles whose maximum lifetime ended before
        ``ended_before``, oldest first, with their secrets; how many."""
        ...

    def handles_overdue(self, now: datetime) -> int:
        """Active handles past their rotation time."""
        ...

    def handles_in_warning(
        self, now: datetime, limit: int, after: tuple[int, str] | None, owner: str = ""
    ) -> list[Handle]:
        """Active handles inside their warning window, by (warn time in microseconds,
        id) after a cursor; only ``owner``'s when given (read by the store)."""
        ...


class AnomalyLog(Protocol):
    def insert_anomaly(self, anomaly: Anomaly) -> None: ...

    def anomaly_counts(self, since: datetime | None = None, owner: str = "") -> dict[str, int]:
        """Anomalies by kind (since a time, or ever; on ``owner``'s handles, or all)."""
        ...
