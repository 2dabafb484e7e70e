"""The durable event log."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from keyturn_server.domain.events import Event, NewEvent


class EventLog(Protocol):
    def append_event(self, new: NewEvent, time: datetime) -> Event:
        """Append in this unit of work; the store assigns the sequence."""
        ...

    def events_after(
        self, sequence: int, limit: int, subject: str = "", owner: str = ""
    ) -> list[Event]:
        """Events after a sequence, in order, at most ``limit``; only those of
        ``subject`` and of ``owner`` when given (read by the store, not by the caller)."""
        ...

    def event_bounds(self) -> tuple[int, int]:
        """(oldest retained sequence, latest sequence); (0, latest) when none is kept."""
        ...

    def sequence_floor(self) -> int:
        """The highest sequence ever pruned: sequences never go back below it."""
        ...

    def prune_events(self, before: datetime) -> int: ...

    def clear_sealed_event_tokens(self, handle_id: str, through: datetime) -> None:
        """Forget the successors that a handle's events up to ``through`` carry."""
        ...

    def event_counts(self, since: datetime) -> list[tuple[str, str, int]]:
        """(subject, kind, count) of the events since a time."""
        ...

    def oldest_event_time(self) -> datetime | None: ...
