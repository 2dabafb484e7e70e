"""An embedded store put back from a copy (``keyturn backup restore``, the file an upgrade
kept for going back): its event sequences start past every one handed out before.

A watcher resumes with the last sequence it saw. The copy's log ends where the copy was
taken, and the restored server then gave the same sequences to new events: a watcher
that had seen up to 1,000 of the replaced log and resumed at 1,000 once the restored one
had passed it was sent what followed 1,000 and never the new events before it, nor told
that the rest of what it knew had been rolled back (before it passed, it was told
RESUME_POINT_AHEAD, and a retry loop waited for the log to catch up). So a restore marks
everything up to past the replaced store's last sequence as pruned, as etcd's restore
bumps and compacts its revisions: every resume point handed out before is OUT_OF_RANGE
(RESUME_POINT_EXPIRED, "start a new watch"), and the next event comes after them all.
When the replaced store is gone or unreadable, the sequences jump by UNKNOWN_GAP.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from keyturn_server.store.sql.events import PRUNED_THROUGH

#: How far sequences jump when what the replaced store handed out cannot be read.
UNKNOWN_GAP = 1_000_000_000


def handed_out(database: Path) -> int | None:
    """The highest event sequence the store at ``database`` ever handed out; None when
    there is no such store or it cannot be read."""
    if not database.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            return _handed_out(db)
    except sqlite3.Error:
        return None


def _handed_out(db: sqlite3.Connection) -> int:
    found = [
        db.execute("SELECT MAX(sequence) FROM events").fetchone()[0],
        db.execute("SELECT MAX(seq) FROM sqlite_sequence WHERE name = 'events'").fetchone()[0],
    ]
    pruned = db.execute("SELECT value FROM meta WHERE name = ?", (PRUNED_THROUGH,)).fetchone()
    if pruned is not None:
        found.append(int(bytes(pruned[0]).decode()))
    return max(int(n or 0) for n in found)


def start_after(database: Path, replaced: int | None) -> int:
    """Make the store at ``database`` hand out sequences past ``replaced`` (what the
    store it replaces handed out; None: unknown) and past its own; the new floor."""
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as db:
        own = _handed_out(db)
        floor = own + UNKNOWN_GAP if replaced is None else max(own, replaced) + 1
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (PRUNED_THROUGH, str(floor).encode()),
        )
        moved = db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (floor,))
        if moved.rowcount == 0:
            db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (floor,))
        db.execute("COMMIT")
    return floor
