"""Refused logins are audited, but a caller without any credential must not decide how
much the store writes.

Each refused call was audited once per peer address per 10 s: a durable write for anyone
who can open a connection. An attacker with many addresses (a botnet, or one host with
an IPv6 /64: 2^64 addresses) made one audit entry (about 300 bytes, a share of a commit)
per refused call, at the rate it could connect. Here the whole 127.0.0.0/8 plays the
many addresses: every source in it reaches the loopback listener.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp

from keyturn.v1 import admin_pb2
from keyturn_server.domain.access_token_service import AUDITED_FAILURES
from tests.harness import Harness

SOURCES = 300


async def refused_from(server: Harness, source: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{server.http_url}/v1/keys") as response,
    ):
        return response.status


async def audited(server: Harness, action: str) -> list[admin_pb2.AuditEvent]:
    page = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action=action, page_size=1000)
    )
    return list(page.events)


async def test_refused_logins_from_many_addresses_make_a_bounded_number_of_entries(
    server: Harness,
) -> None:
    sources = [f"127.{1 + i // 250}.{i % 250}.{7}" for i in range(SOURCES)]
    statuses = await asyncio.gather(*(refused_from(server, s) for s in sources))
    assert set(statuses) == {401}
    entries = await audited(server, "auth.failure")
    assert len(entries) == AUDITED_FAILURES  # not one per address
    assert {e.peer for e in entries} <= set(sources)

    # What was not audited one by one is, as one number, within seconds and at the
    # latest when the server stops.
    await server.restart()
    [summary] = await audited(server, "auth.failure.unaudited")
    assert summary.details["count"] == str(SOURCES - AUDITED_FAILURES)
    assert summary.outcome == "denied"
    server.clock.advance(timedelta(seconds=11))  # a new window: audited one by one again
    assert await refused_from(server, "127.9.9.9") == 401
    assert len(await audited(server, "auth.failure")) == AUDITED_FAILURES + 1


async def test_one_ipv6_prefix_is_one_peer(server: Harness) -> None:
    """A host holds its whole /64: its addresses are audited once per window, as one."""
    assert server.app is not None and server.app.services is not None
    tokens = server.app.services.tokens
    for i in range(20):
        await tokens.audit_failure(
            f"2001:db8:1:2::{i + 1:x}", "/keyturn.v1.KeyService/ListKeys", "x"
        )
    await tokens.audit_failure("2001:db8:1:3::1", "/keyturn.v1.KeyService/ListKeys", "x")
    entries = await audited(server, "auth.failure")
    assert [e.peer for e in entries] == ["2001:db8:1:2::1", "2001:db8:1:3::1"]
