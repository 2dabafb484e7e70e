"""The audit retention: old entries leave the store, the kept log still verifies as one
chain, and removing entries any other way is still caught.

Before it, nothing ever removed an audit entry: every handle generated or rotated adds
one, so a busy service's store grew by about a million entries a day until its disk was
full. The clock is moved, not waited for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keyturn.v1 import admin_pb2, handles_pb2
from keyturn_server.clock import ManualClock
from keyturn_server.domain import audit_retention, audit_service
from tests.harness import Harness
from tests.security.database import query, run_sql
from tests.test_backup import keyturn
from tests.test_listeners import settings

A = admin_pb2
DAY = timedelta(days=1)


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path / "data", clock, audit_retention=2 * DAY)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def entries(server: Harness) -> list[A.AuditEvent]:
    found: list[A.AuditEvent] = []
    token = ""
    while True:
        page = await server.admin.admin.ListAuditEvents(
            A.ListAuditEventsRequest(page_size=100, page_token=token)
        )
        found += page.events
        token = page.next_page_token
        if not token:
            return found


async def handles(server: Harness, count: int) -> None:
    for _ in range(count):
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))


async def verify(server: Harness) -> A.VerifyAuditLogResponse:
    result: A.VerifyAuditLogResponse = await server.admin.admin.VerifyAuditLog(
        A.VerifyAuditLogRequest()
    )
    return result


async def test_entries_past_the_retention_are_pruned_and_the_kept_log_verifies(
    server: Harness,
) -> None:
    await handles(server, 3)
    old = await entries(server)
    await server.advance(DAY)
    await handles(server, 2)
    recent = [e for e in await entries(server) if e.sequence > old[-1].sequence]
    assert len(recent) == 2

    await server.advance(DAY + timedelta(seconds=1))  # the first ones are past 2 days

    kept = await entries(server)
    assert {e.sequence for e in kept}.isdisjoint(e.sequence for e in old)
    assert kept[: len(recent)] == recent
    [pruned] = [e for e in kept if e.action == "audit.prune"]
    assert pruned.details["first_sequence"] == str(old[0].sequence) == "1"
    assert pruned.details["through_sequence"] == str(old[-1].sequence)
    assert pruned.details["through_hash"] == old[-1].hash.hex()
    assert pruned.principal == "keyturn" and pruned.reason == "older than the audit retention"
    verified = await verify(server)
    assert verified.valid, verified.problem
    assert verified.first_sequence == old[-1].sequence + 1 == kept[0].sequence
    assert verified.entries_checked == len(kept)


async def test_a_backlog_goes_in_batches_each_audited(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_retention, "BATCH", 3)
    await handles(server, 7)
    written = len(await entries(server))
    await server.advance(3 * DAY)
    kept = await entries(server)
    prunes = [e for e in kept if e.action == "audit.prune"]
    # Batches of 3. The newest entry written is kept until the first prune entry follows
    # it; the prune entries themselves are recent, and stay.
    assert [(p.details["first_sequence"], p.details["through_sequence"]) for p in prunes] == [
        (str(first), str(min(first + 2, written))) for first in range(1, written + 1, 3)
    ]
    assert kept == prunes and kept[0].sequence == written + 1
    verified = await verify(server)
    assert verified.valid, verified.problem
    assert verified.first_sequence == written + 1


async def test_the_newest_entry_is_never_pruned_and_a_quiet_log_settles(
    server: Harness,
) -> None:
    await handles(server, 2)
    for _ in range(3):
        await server.advance(500 * DAY)
    kept = await entries(server)
    assert kept  # the anchor always names an entry that is there
    verified = await verify(server)
    assert verified.valid, verified.problem
    assert verified.first_sequence == kept[0].sequence
    # Nothing is due: the scheduler sleeps rather than pruning the newest entry (or its
    # own prune entries) over and over.
    assert server.app is not None and server.app.services is not None
    scheduler = server.app.services.scheduler
    assert scheduler.next_deadline is None or scheduler.next_deadline > server.clock.now()
    passes = scheduler.passes
    await server.settle()
    assert scheduler.passes == passes + 1


async def test_an_entry_exactly_as_old_as_the_retention_is_pruned(server: Harness) -> None:
    """What the scheduler finds due is pruned: a deadline it could not act on would be
    due again at once, and the scheduler would spin on it."""
    await handles(server, 2)
    written = await entries(server)
    await server.advance(2 * DAY)
    kept = await entries(server)
    # All of them: the newest too, once the first prune entry follows it.
    assert kept[0].sequence == written[-1].sequence + 1
    assert server.app is not None and server.app.services is not None
    scheduler = server.app.services.scheduler
    assert scheduler.next_deadline is not None and scheduler.next_deadline > server.clock.now()


async def test_with_the_retention_off_every_entry_is_kept(server: Harness) -> None:
    await server.restart(audit_retention=None)
    await handles(server, 2)
    written = await entries(server)
    await server.advance(1000 * DAY)
    assert (await entries(server))[: len(written)] == written
    assert (await verify(server)).first_sequence == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], timedelta(days=400)),
        (["--audit-retention", "30d"], timedelta(days=30)),
        (["--audit-retention", "off"], None),
    ],
)
def test_the_audit_retention_comes_from_its_flag(
    argv: list[str], expected: timedelta | None
) -> None:
    assert settings(argv).audit_retention == expected


@pytest.mark.parametrize("short", ["12h", "400", "40m"])
def test_an_audit_retention_shorter_than_a_day_is_refused(short: str) -> None:
    with pytest.raises(SystemExit):
        settings(["--audit-retention", short])


# --- removing entries any other way is still caught -------------------------------------
# The database writer of the threat model (tests/security/database.py): plain SQL on the
# rows, no MASTER_KEY.


async def _pruned_twice(server: Harness) -> tuple[bytes, int]:
    """Prune twice; the base record after the first pruning, and the first entry kept."""
    await handles(server, 3)
    await server.advance(3 * DAY)
    first_base = _base(server)
    await handles(server, 3)
    await server.advance(3 * DAY)
    verified = await verify(server)
    assert verified.valid, verified.problem
    return first_base, verified.first_sequence


def _base(server: Harness) -> bytes:
    return bytes(query(server, "SELECT value FROM meta WHERE name = 'audit_base'")[0]["value"])


@pytest.mark.parametrize(
    "tamper",
    [
        "delete the first entry kept",
        "delete the base record",
        "put back an older base record",
        "move the base record",
        "put back a pruned entry",
    ],
)
async def test_removing_entries_beside_the_retention_is_detected(
    server: Harness, tamper: str
) -> None:
    older_base, first = await _pruned_twice(server)
    _, digest, mac = _base(server).decode().split(":")
    await server.stop()
    if tamper == "delete the first entry kept":
        run_sql(server, "DELETE FROM audit WHERE sequence = ?", (first,))
        broken, says = first + 1, f"pruned only up to entry {first - 1}"
    elif tamper == "delete the base record":
        run_sql(server, "DELETE FROM meta WHERE name = 'audit_base'")
        broken, says = first, f"entries 1 to {first - 1} were removed"
    elif tamper == "put back an older base record":
        run_sql(server, "UPDATE meta SET value = ? WHERE name = 'audit_base'", (older_base,))
        broken, says = first, "pruned only up to entry"
    elif tamper == "move the base record":
        moved = f"{first}:{digest}:{mac}".encode()
        run_sql(server, "UPDATE meta SET value = ? WHERE name = 'audit_base'", (moved,))
        broken, says = first + 1, "failed authentication"
    else:
        run_sql(
            server,
            "INSERT INTO audit SELECT 1, time, action, principal, role, user_id, "
            "resource_type, resource_id, reason, peer, outcome, details, hash, previous_hash "
            "FROM audit WHERE sequence = ?",
            (first,),
        )
        broken, says = 1, "pruned entries were put back"
    await server.start()
    result = await verify(server)
    assert not result.valid
    assert result.first_broken_sequence == broken
    assert says in result.problem


# --- verification in parts ------------------------------------------------------------
# One read of the store per PART entries: a snapshot held over a whole long log kept
# SQLite's write-ahead log from being checkpointed (it grew with every write meanwhile)
# and PostgreSQL from vacuuming.


def count_reads(
    server: Harness,
    monkeypatch: pytest.MonkeyPatch,
    before: Callable[[int], Awaitable[None]] | None = None,
) -> list[int]:
    """Count the server's reads of its store (one item, the count); ``before(n)`` runs
    before the n-th."""
    assert server.app is not None
    store = server.app.store
    report = store.report
    reads = [0]

    async def counted(work: Any, caller: str = "") -> Any:
        reads[0] += 1
        if before is not None:
            await before(reads[0])
        return await report(work, caller)

    monkeypatch.setattr(store, "report", counted)
    return reads


async def test_a_long_log_is_verified_in_parts_and_a_break_is_found_in_any(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_service, "PART", 3)
    await handles(server, 10)
    written = len(await entries(server))
    reads = count_reads(server, monkeypatch)
    verified = await verify(server)
    assert verified.valid and verified.entries_checked == written
    assert reads[0] == written // 3 + 1

    await server.stop()
    run_sql(server, "DELETE FROM audit WHERE sequence = ?", (7,))
    await server.start()
    broken = await verify(server)
    assert not broken.valid and broken.first_broken_sequence == 8
    assert "entry 7 is missing" in broken.problem


async def test_entries_pruned_while_a_verification_runs_are_not_reported_missing(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_service, "PART", 3)
    await handles(server, 10)

    async def prune(read: int) -> None:
        if read == 2:  # the retention runs between the verification's first two parts
            await server.advance(3 * DAY)

    count_reads(server, monkeypatch, prune)
    verified = await verify(server)
    assert verified.valid, verified.problem
    kept = await entries(server)
    assert verified.first_sequence == kept[0].sequence > 4


@pytest.mark.sqlite_only  # keyturn backup copies the SQLite file
async def test_a_backup_of_a_pruned_log_verifies(server: Harness, tmp_path: Path) -> None:
    """`keyturn backup create` replaces its file only once the copy's audit chain
    verifies: a check that knew nothing of the pruned start would refuse every backup
    taken after the first pruning."""
    await handles(server, 3)
    await server.advance(3 * DAY)
    assert (await verify(server)).first_sequence > 1
    await server.stop()
    copy = tmp_path / "keyturn.backup"
    made = keyturn("backup", "create", str(copy), "--data-dir", str(server.data_dir))
    assert made.returncode == 0, made.stderr
    assert "audit log intact" in made.stdout + made.stderr
