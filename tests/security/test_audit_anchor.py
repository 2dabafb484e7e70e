"""A database-file writer without MASTER_KEY hides what happened: deletes the newest audit
entries and rewrites the head beside the log, or deletes the whole log. The head is an
anchor authenticated with a key derived from the keyring, and the keyring's creation is
the first entry of every log, so VerifyAuditLog reports both; the JSON log stream carries
each entry's hash, a witness outside the database."""

from __future__ import annotations

import io
import json

from keyturn.v1 import admin_pb2, keys_pb2
from tests.harness import Harness
from tests.security.database import run_sql, tamper


async def _busy(server: Harness, n: int = 5) -> None:
    for _ in range(n):
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))


async def _verify(server: Harness) -> admin_pb2.VerifyAuditLogResponse:
    return await server.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())


async def test_deleting_the_newest_entries_and_rewriting_the_head_is_detected(
    server: Harness,
) -> None:
    await _busy(server)
    await server.stop()
    last = run_sql(server, "SELECT MAX(sequence) AS n FROM audit")[0]["n"]
    keep = last - 3
    kept = run_sql(server, "SELECT hash FROM audit WHERE sequence = ?", (keep,))[0]["hash"]
    head = f"{keep}:{bytes(kept).hex()}".encode()
    await tamper(
        server,
        ("DELETE FROM audit WHERE sequence > ?", (keep,)),
        ("UPDATE meta SET value = ? WHERE name = 'audit_head'", (head,)),
    )
    verified = await _verify(server)
    assert not verified.valid
    assert "anchor" in verified.problem


async def test_deleting_the_whole_log_and_its_head_is_detected(server: Harness) -> None:
    await _busy(server)
    await tamper(
        server,
        ("DELETE FROM audit", ()),
        ("DELETE FROM meta WHERE name = 'audit_head'", ()),
    )
    verified = await _verify(server)
    assert not verified.valid
    assert "anchor is missing" in verified.problem


async def test_the_keyrings_creation_is_the_first_entry(server: Harness) -> None:
    page = await server.admin.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_size=1))
    first = page.events[0]
    assert (first.sequence, first.action, first.resource_type) == (1, "keyring.create", "keyring")


async def test_the_log_stream_witnesses_the_head(
    server: Harness, logs_hold_no_secrets: io.StringIO
) -> None:
    """A writer who puts back an older anchor (one it saved) with the entries it had is
    not detectable from inside the database: the JSON audit lines, shipped elsewhere,
    name every entry's hash, and the newest must be the head VerifyAuditLog reports."""
    await _busy(server, 3)
    verified = await _verify(server)
    assert verified.valid
    lines = [json.loads(line) for line in logs_hold_no_secrets.getvalue().splitlines()]
    audited = [line for line in lines if line.get("category") == "audit"]
    newest = max(audited, key=lambda line: int(line["sequence"]))
    assert newest["hash"] == verified.head_hash.hex()
    assert int(newest["sequence"]) == verified.entries_checked
