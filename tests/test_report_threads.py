"""Slow reads must not hold up durable writes.

Listings, statistics, the audit log's pages and its verification run as reports, in
threads, each with its own read transaction; commits ran in threads too (SQLite's COMMIT,
and every PostgreSQL transaction). Both used asyncio's default executor, which has
min(32, cores + 4) threads: six on two cores. Six slow reports at once (a service token's
listing of a million handles with its total, an auditor's VerifyAuditLog of a long log)
took every thread, and every commit queued behind them: each validation, key and handle
of every caller waited until a report finished. Reports now have threads of their own,
and so do commits; and one caller's reports take at most two of the report threads, so
its flood of listings does not queue everyone else's.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime

import grpc
import pytest

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server.domain.repositories import Repository
from keyturn_server.store.sql.keys import KeySql
from tests.harness import Harness

SLOW_REPORTS = 16


async def test_slow_reports_do_not_hold_up_durable_writes(server: Harness) -> None:
    made = await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="api"))
    assert server.app is not None
    release = threading.Event()

    def slow(repo: Repository) -> None:  # as a listing over a very large store would be
        release.wait(30)

    reports = [asyncio.create_task(server.app.store.report(slow)) for _ in range(SLOW_REPORTS)]
    try:
        await asyncio.sleep(0.3)  # every thread they were given is taken
        assert not any(r.done() for r in reports)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await server.admin.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=made.token), timeout=10
        )
        assert answer.validation.valid
        assert loop.time() - started < 3, "the validation's commit waited for the reports"
        issued = await server.admin.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="api"), timeout=10
        )
        assert issued.token
    finally:
        release.set()
        await asyncio.gather(*reports)
    assert all(r.result() is None for r in reports)  # the reports went on to finish


async def test_one_callers_slow_reports_leave_threads_for_the_others(server: Harness) -> None:
    flooder = await server.client_for("service", "flooder")
    await flooder.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
    other = await server.client_for("service", "other")
    await other.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
    assert server.app is not None
    release = threading.Event()

    def slow(repo: Repository) -> None:
        release.wait(30)

    reports = [
        asyncio.create_task(server.app.store.report(slow, caller="flooder"))
        for _ in range(SLOW_REPORTS)
    ]
    try:
        await asyncio.sleep(0.3)
        listed = await other.keys.ListKeys(keys_pb2.ListKeysRequest(), timeout=3)
        assert listed.total_size == 1
        # The flooder's own next listing waits its turn behind its reports.
        with pytest.raises(grpc.aio.AioRpcError) as waited:
            await flooder.keys.ListKeys(keys_pb2.ListKeysRequest(), timeout=1)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
        await asyncio.gather(*reports)
    listed = await flooder.keys.ListKeys(keys_pb2.ListKeysRequest(), timeout=5)
    assert listed.total_size == 1


async def test_one_callers_health_checks_leave_threads_for_the_others(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GetHealth counts every key and handle in a report thread, and every role may ask
    for it: it took those threads outside any caller's share, so one service's flood of
    health checks held every report thread and the others' listings waited."""
    flooder = await server.client_for("service", "flooder")
    other = await server.client_for("service", "other")
    release = threading.Event()
    count = KeySql.key_counts

    def slow(self: KeySql, now: datetime) -> list[tuple[str, str, int, int, int]]:
        release.wait(30)  # as counting the keys of a very large store would be
        return count(self, now)

    monkeypatch.setattr(KeySql, "key_counts", slow)
    checks = [
        asyncio.create_task(
            flooder.admin.GetHealth(admin_pb2.GetHealthRequest(component="keys"), timeout=30)
        )
        for _ in range(SLOW_REPORTS)
    ]
    try:
        await asyncio.sleep(0.3)
        listed = await other.keys.ListKeys(keys_pb2.ListKeysRequest(), timeout=3)
        assert listed.total_size == 0
    finally:
        release.set()
        answers = await asyncio.gather(*checks)
    assert all(a.health.status == admin_pb2.SERVING_STATUS_SERVING for a in answers)


async def test_reports_given_up_on_still_count_against_their_caller(server: Harness) -> None:
    """A caller that cancels its reports (short deadlines) and sends more must not get
    more threads than its share: the abandoned ones still run."""
    other = await server.client_for("service", "other")
    assert server.app is not None
    store = server.app.store
    release = threading.Event()

    def slow(repo: Repository) -> None:
        release.wait(30)

    def flood() -> list[asyncio.Task[None]]:
        return [
            asyncio.create_task(store.report(slow, caller="flooder")) for _ in range(SLOW_REPORTS)
        ]

    abandoned = flood()
    await asyncio.sleep(0.3)
    for report in abandoned:
        report.cancel()
    await asyncio.gather(*abandoned, return_exceptions=True)
    again = flood()
    try:
        await asyncio.sleep(0.3)
        listed = await other.keys.ListKeys(keys_pb2.ListKeysRequest(), timeout=3)
        assert listed.total_size == 0
    finally:
        release.set()
        await asyncio.gather(*again)
