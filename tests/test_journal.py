"""The journal's entries, against a small hand-written fake of the repository protocols it
writes to (EventLog, AnomalyLog, AuditRepository, Transaction): the shape of every event
and audit entry is decided here, for services and the scheduler alike."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import cast

from keyturn_server.clock import ManualClock
from keyturn_server.domain.access import SYSTEM, Principal, Role
from keyturn_server.domain.anomalies import Anomaly, AnomalyAction, AnomalyKind
from keyturn_server.domain.audit import GENESIS, AuditChain, AuditDraft, AuditEntry, AuditLog
from keyturn_server.domain.events import Event, EventKind, NewEvent, Subject
from keyturn_server.domain.handles import Handle, HandleSchedule, HandleState
from keyturn_server.domain.journal import Journal, Resource
from keyturn_server.domain.repositories import Repository

START = datetime(2031, 5, 17, 12, 0, tzinfo=UTC)


class FakeRepository:
    """What a unit of work records, kept in lists."""

    def __init__(self) -> None:
        self.events: list[NewEvent] = []
        self.anomalies: list[Anomaly] = []
        self.audit: list[AuditEntry] = []
        self.committed: list[Callable[[], None]] = []

    def append_event(self, new: NewEvent, time: datetime) -> Event:
        self.events.append(new)
        return Event(len(self.events), time, new.kind, new.subject, new.subject_id, "", "", None)

    def insert_anomaly(self, anomaly: Anomaly) -> None:
        self.anomalies.append(anomaly)

    def append_audit(
        self, draft: AuditDraft, time: datetime, link: Callable[[bytes, int], bytes]
    ) -> AuditEntry:
        previous = self.audit[-1].hash if self.audit else GENESIS
        entry = AuditEntry(
            len(self.audit) + 1, time, draft, link(previous, len(self.audit) + 1), previous
        )
        self.audit.append(entry)
        return entry

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.committed.append(callback)


def journal() -> tuple[Journal, FakeRepository, Repository, list[AuditEntry]]:
    sunk: list[AuditEntry] = []
    fake = FakeRepository()
    log = AuditLog(AuditChain(b"k" * 32), sunk.append)
    # The journal needs only the protocols the fake implements.
    return Journal(log, ManualClock(START)), fake, cast(Repository, fake), sunk


def a_handle() -> Handle:
    return Handle(
        id="hdl_aaaaaaaaaaaaaaaa",
        type="workflow",
        algorithm="sha512",
        state=HandleState.ACTIVE,
        owner="svc",
        created_for="",
        context={},
        usage_count=0,
        max_usage=10,
        create_time=START,
        rotate_time=START + timedelta(minutes=30),
        expire_time=START + timedelta(hours=4),
        warn_time=START + timedelta(minutes=25),
        schedule=HandleSchedule(*(timedelta(minutes=30),) * 4),
    )


def test_an_event_describes_the_record_after_the_change() -> None:
    j, fake, repo, _ = journal()
    handle = a_handle()
    j.event(repo, EventKind.ROTATED, handle, reason="scheduled", sealed_token=b"sealed")
    [event] = fake.events
    assert (event.kind, event.subject, event.subject_id) == (
        EventKind.ROTATED,
        Subject.HANDLE,
        handle.id,
    )
    assert (event.subject_type, event.owner, event.snapshot) == ("workflow", "svc", handle)
    assert (event.reason, event.sealed_token) == ("scheduled", b"sealed")


def test_an_audit_entry_names_actor_resource_and_purpose_and_reaches_the_log_on_commit() -> None:
    j, fake, repo, sunk = journal()
    caller = Principal("svc", Role.SERVICE, peer="ipv4:10.0.0.9:5000")
    j.audit(
        repo, "handle.revoke", about=a_handle(), by=caller, user_id="u1", reason="done", details={}
    )
    [entry] = fake.audit
    d = entry.draft
    assert (d.action, d.principal, d.role, d.peer) == (
        "handle.revoke",
        "svc",
        "SERVICE",
        "ipv4:10.0.0.9:5000",
    )
    assert (d.resource_type, d.resource_id, d.user_id, d.reason, d.outcome) == (
        "handle",
        "hdl_aaaaaaaaaaaaaaaa",
        "u1",
        "done",
        "ok",
    )
    assert entry.time == START
    assert sunk == []  # not before the unit of work commits
    for callback in fake.committed:
        callback()
    assert sunk == [entry]


def test_an_unattributed_failure_is_audited_with_its_peer_only() -> None:
    j, fake, repo, _ = journal()
    j.audit(repo, "auth.failure", about=Resource("rpc", "/x"), by=None, peer="p", outcome="denied")
    d = fake.audit[0].draft
    assert (d.principal, d.role, d.peer, d.resource_type, d.outcome) == (
        "",
        "",
        "p",
        "rpc",
        "denied",
    )


def test_an_anomaly_on_no_handle_is_kept_streamed_and_audited_by_the_system() -> None:
    j, fake, repo, _ = journal()
    anomaly = Anomaly.new(
        AnomalyKind.INVALID_TOKEN_FLOOD, AnomalyAction.FLAGGED, START, "", {"peer": "p"}
    )
    j.anomaly(repo, anomaly, None)
    assert fake.anomalies == [anomaly]
    [event] = fake.events
    assert (event.kind, event.subject, event.snapshot, event.anomaly) == (
        EventKind.ANOMALY,
        Subject.HANDLE,
        None,
        anomaly,
    )
    d = fake.audit[0].draft
    assert (d.action, d.principal, d.outcome) == ("handle.anomaly", SYSTEM.name, "flagged")
    assert d.details["kind"] == "INVALID_TOKEN_FLOOD" and d.details["evidence.peer"] == "p"
