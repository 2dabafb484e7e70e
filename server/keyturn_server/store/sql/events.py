"""The event log in SQL."""

from __future__ import annotations

import json
from datetime import datetime

from keyturn_server.clock import optional_datetime, to_micros
from keyturn_server.domain.events import Event, NewEvent
from keyturn_server.store import rows
from keyturn_server.store.integrity import EVENT_COLUMNS, columns_of
from keyturn_server.store.sql.meta import MetaSql

PRUNED_THROUGH = "events_pruned_through"


class EventSql(MetaSql):
    #: Events appended by this unit of work, for the commit listeners (set by the
    #: repository that this is a part of).
    events: list[Event]

    def append_event(self, new: NewEvent, time: datetime) -> Event:
        self._serialise_append()
        anomaly = json.dumps(rows.anomaly_json(new.anomaly)) if new.anomaly else None
        fields = (
            to_micros(time),
            new.kind.value,
            new.subject.value,
            new.subject_id,
            new.subject_type,
            new.owner,
            None if new.deadline is None else to_micros(new.deadline),
            new.reason,
            new.key_version,
            rows.snapshot_json(new.snapshot),
            anomaly,
        )
        # Covered: the owner, who alone is delivered a sealed successor the event carries.
        mac = self._integrity.tag("events", fields)
        row = self._one(
            "INSERT INTO events (time, kind, subject, subject_id, subject_type, owner, deadline, "
            "reason, key_version, snapshot, anomaly, sealed_token, mac) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING sequence",
            (*fields, new.sealed_token, mac),
        )
        event = Event(
            sequence=row["sequence"],
            time=time,
            kind=new.kind,
            subject=new.subject,
            subject_id=new.subject_id,
            subject_type=new.subject_type,
            owner=new.owner,
            snapshot=new.snapshot,
            deadline=new.deadline,
            reason=new.reason,
            key_version=new.key_version,
            anomaly=new.anomaly,
            sealed_token=new.sealed_token,
        )
        self.events.append(event)
        return event

    def events_after(
        self, sequence: int, limit: int, subject: str = "", owner: str = ""
    ) -> list[Event]:
        """Events after a sequence, in order (of one subject, of one owner: "" for any);
        a tampered one is left out."""
        where = "sequence > ?"
        params: list[object] = [sequence]
        for column, value in (("subject", subject), ("owner", owner)):
            if value:
                where += f" AND {column} = ?"
                params.append(value)
        found = self._all(
            f"SELECT * FROM events WHERE {where} ORDER BY sequence LIMIT ?", [*params, limit]
        )
        integrity = self._integrity
        return [
            rows.event_from_row(r)
            for r in found
            if integrity.intact(
                "events", columns_of(r, EVENT_COLUMNS), r["mac"], f"sequence {r['sequence']}"
            )
        ]

    def event_bounds(self) -> tuple[int, int]:
        """(oldest retained sequence, latest sequence); (0, latest) when none is kept."""
        row = self._one("SELECT MIN(sequence) AS lo, MAX(sequence) AS hi FROM events")
        latest = max(row["hi"] or 0, self.sequence_floor())
        return (row["lo"] or 0), latest

    def sequence_floor(self) -> int:
        """The highest sequence ever pruned: sequences never go back below it."""
        raw = self.get_meta(PRUNED_THROUGH)
        return int(raw.decode()) if raw else 0

    def prune_events(self, before: datetime) -> int:
        row = self._one(
            "SELECT MAX(sequence) AS hi, COUNT(*) AS n FROM events WHERE time < ?",
            (to_micros(before),),
        )
        if not row["n"]:
            return 0
        self._run("DELETE FROM events WHERE sequence <= ?", (row["hi"],))
        self.set_meta(PRUNED_THROUGH, str(row["hi"]).encode())
        return int(row["n"])

    def clear_sealed_event_tokens(self, handle_id: str, through: datetime) -> None:
        self._run(
            "UPDATE events SET sealed_token = NULL WHERE subject_id = ? "
            "AND sealed_token IS NOT NULL AND time <= ?",
            (handle_id, to_micros(through)),
        )

    def event_counts(self, since: datetime) -> list[tuple[str, str, int]]:
        """(subject, kind, count) of the events since ``since``."""
        found = self._all(
            "SELECT subject, kind, COUNT(*) AS n FROM events WHERE time >= ? GROUP BY 1, 2",
            (to_micros(since),),
        )
        return [(r["subject"], r["kind"], r["n"]) for r in found]

    def oldest_event_time(self) -> datetime | None:
        row = self._one("SELECT time FROM events ORDER BY sequence LIMIT 1")
        return None if row is None else optional_datetime(row["time"])
