"""The scheduler's lease (domain/lease.py) in SQL: one named row of the meta table,
holding its epoch, holder and start as JSON, so that no migration is needed.

On PostgreSQL a fenced unit of work reads the row FOR SHARE and a takeover FOR UPDATE:
the two conflict, so each waits for the other to end; fenced units of one holder do not
conflict with each other. SQLite runs one unit at a time and needs no lock.
"""

from __future__ import annotations

import json
from datetime import datetime

from keyturn_server.clock import from_micros, to_micros
from keyturn_server.domain.lease import Lease
from keyturn_server.store.sql.meta import MetaSql

LEASE = "scheduler.lease"


def _lease(value: bytes) -> Lease:
    body = json.loads(bytes(value).decode())
    return Lease(int(body["epoch"]), str(body["holder"]), from_micros(int(body["since"])))


class LeaseSql(MetaSql):
    def scheduler_lease(self, *, lock: bool = False) -> Lease | None:
        suffix = " FOR SHARE" if lock and self.concurrent_writers else ""
        row = self._one(f"SELECT value FROM meta WHERE name = ?{suffix}", (LEASE,))
        return None if row is None else _lease(row["value"])

    def take_scheduler_lease(self, holder: str, now: datetime) -> Lease:
        # The row exists before it is locked, so that two first takeovers conflict too.
        self._run(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
            (LEASE, _body(0, "", now)),
        )
        row = self._one(f"SELECT value FROM meta WHERE name = ?{self._for_update}", (LEASE,))
        taken = Lease(_lease(row["value"]).epoch + 1, holder, now)
        self._run(
            "UPDATE meta SET value = ? WHERE name = ?",
            (_body(taken.epoch, holder, now), LEASE),
        )
        return taken


def _body(epoch: int, holder: str, since: datetime) -> bytes:
    return json.dumps({"epoch": epoch, "holder": holder, "since": to_micros(since)}).encode()
