"""The first start of several replicas on a database written before row MACs: every row
gets its MAC once, whichever replica gives it (bootstrap._protect_rows). Run with
KEYTURN_TEST_BACKEND=postgres."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import psycopg
import pytest

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server import bootstrap
from keyturn_server.clock import ManualClock
from keyturn_server.crypto.keyring import WRAP_PREFIX, KeyringData, fingerprint
from keyturn_server.crypto.master import parse_master_key
from tests.harness import MASTER_KEY, Harness

pytestmark = pytest.mark.postgres

#: The tables whose rows carry a MAC since schema 2, and the event log.
PROTECTED = ("keys", "key_versions", "handles", "handle_secrets", "access_tokens", "config")


def as_before_row_macs(url: str) -> int:
    """Make the database look as one written before row MACs: no row has a MAC, and the
    keyring says they were never given. How many rows there are to give one."""
    master = parse_master_key(MASTER_KEY, None)
    name = WRAP_PREFIX + fingerprint(master)
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        total = 0
        for table in (*PROTECTED, "events"):
            total += conn.execute(f"UPDATE {table} SET mac = NULL").rowcount  # type: ignore[arg-type]
        row = conn.execute("SELECT value FROM meta WHERE name = %s", (name,)).fetchone()
        assert row is not None
        data = KeyringData.unwrap(bytes(row[0]), master)
        data.integrity, data.protect_from, data.protected_rows = 0, "", 0
        conn.execute("UPDATE meta SET value = %s WHERE name = %s", (data.wrap(master), name))
    return total


async def test_two_replicas_starting_at_once_give_each_row_its_mac_once(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both replicas read where the last unit stopped, tagged the same rows and each added
    them to the count: the audit said twice as many rows as there were, once per replica.
    Now a unit claims the position (the keyring's row, locked) before it reads it."""
    first = await Harness(tmp_path / "a", clock).start()
    for _ in range(40):
        await first.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
        await first.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
    await first.stop()
    url = first.settings.store
    assert url is not None
    total = as_before_row_macs(url)
    monkeypatch.setattr(bootstrap, "PROTECT_UNIT", 5)

    second = Harness(tmp_path / "b", clock, store=url)
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy(tmp_path / "a" / "admin.token", tmp_path / "b" / "admin.token")
    await asyncio.gather(first.start(), second.start())
    try:
        protected = await first.admin.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(action="store.protect")
        )
        assert [e.details["rows"] for e in protected.events] == [str(total)]
        verdict = await second.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())
        assert verdict.valid, verdict
        for replica in (first, second):
            listed = await replica.admin.keys.ListKeys(keys_pb2.ListKeysRequest())
            assert listed.total_size == 40
    finally:
        await second.stop()
        await first.stop()
