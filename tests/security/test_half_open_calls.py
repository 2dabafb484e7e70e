"""gRPC calls whose request message never comes (server/keyturn_server/api/arrivals.py).

A unary or server-streaming call is held by grpc.aio from its HEADERS frame until its
message arrives, before any handler runs. Before, 20,000 such calls from one host with
no token took the server from 72 to 491 MiB for as long as their connections stayed
open, and a call that ended its stream without a message was never answered at all.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import admin_pb2, admin_pb2_grpc
from tests.harness import Harness
from tests.process import ServerProcess
from tests.security.raw_h2 import RawConnection

VALIDATE = "/keyturn.v1.HandleService/ValidateHandle"
RESOURCE_EXHAUSTED = str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
DEADLINE_EXCEEDED = str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
INVALID_ARGUMENT = str(grpc.StatusCode.INVALID_ARGUMENT.value[0])


@pytest.mark.parametrize(
    "path",
    [
        VALIDATE,
        "/keyturn.v1.HandleService/WatchExpiring",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ],
    ids=["unary", "server stream", "health check", "health watch"],
)
async def test_a_call_that_ends_its_stream_without_a_message_is_answered(
    server: Harness, path: str
) -> None:
    async with RawConnection(server.address) as raw:
        stream = raw.headers(path, token=server.admin_token, end_stream=True)
        await raw.flush()
        [outcome] = await raw.until([stream], within=5)
    assert outcome.status == INVALID_ARGUMENT, outcome
    assert "without a request message" in outcome.message


async def test_a_request_that_never_arrives_ends_its_call_at_the_deadline(
    server: Harness,
) -> None:
    await server.restart(request_arrival_timeout=timedelta(seconds=1))
    async with RawConnection(server.address) as raw:
        started = time.monotonic()
        stream = raw.headers(VALIDATE)
        await raw.flush()
        [outcome] = await raw.until([stream], within=5)
    assert outcome.status == DEADLINE_EXCEEDED, outcome
    assert 0.9 < time.monotonic() - started < 4


async def test_past_its_cap_an_address_loses_its_oldest_waiting_calls_not_its_new_ones(
    server: Harness, logs_hold_no_secrets: object, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller that shares the attacker's address (the same NAT or proxy) is served:
    its message arrives with its headers, so it is never the oldest waiting."""
    await server.restart(max_waiting_calls_per_peer=20)
    caplog.set_level(logging.WARNING, logger="keyturn.api")
    async with RawConnection(server.address) as raw:
        first = [raw.headers(VALIDATE) for _ in range(20)]
        await raw.flush()
        await asyncio.sleep(0.5)  # all twenty are waiting now
        assert not any(raw.outcomes[s].ended for s in first)
        more = [raw.headers(VALIDATE) for _ in range(30)]
        await raw.flush()
        evicted = await raw.until(first + more[:10], within=5)
        assert {o.status for o in evicted} == {RESOURCE_EXHAUSTED}
        assert {o.reason for o in evicted} == {"TOO_MANY_WAITING_CALLS"}
        assert not any(raw.outcomes[s].ended for s in more[10:])  # the newest twenty wait
        for _ in range(20):  # meanwhile, a caller from the same address is served
            health = await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest())
            assert health.health.status
    warned = [r for r in caplog.records if "request message has not arrived" in r.getMessage()]
    assert len(warned) == 1  # once for the address, not once per call


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
async def test_twenty_thousand_half_open_calls_leave_memory_bounded(tmp_path: Path) -> None:
    """From one host with no token, over four connections: HEADERS, and no message."""
    server = ServerProcess(tmp_path / "data", "--http-listen", "off")
    await server.start()
    try:
        before = _rss_mib(server.pid)
        async with (
            RawConnection(server.address) as a,
            RawConnection(server.address) as b,
            RawConnection(server.address) as c,
            RawConnection(server.address) as d,
        ):
            for _ in range(50):
                for raw in (a, b, c, d):
                    for _ in range(100):
                        raw.headers(VALIDATE)
                    await raw.flush()
                await asyncio.sleep(0.05)
            await asyncio.sleep(2)
            grown = _rss_mib(server.pid) - before
            async with grpc.aio.insecure_channel(server.address) as channel:
                admin = admin_pb2_grpc.AdminServiceStub(channel)
                owner = (("authorization", f"Bearer {server.token()}"),)
                took = []
                for _ in range(21):
                    started = time.perf_counter()
                    await admin.GetHealth(admin_pb2.GetHealthRequest(), metadata=owner, timeout=5)
                    took.append(time.perf_counter() - started)
            assert all(not raw.terminated for raw in (a, b, c, d))
        print(
            f"20,000 half-open calls: RSS {before:.0f} -> +{grown:.0f} MiB; another "
            f"caller's GetHealth p50 {statistics.median(took) * 1000:.1f} ms"
        )
        assert grown < 200, grown
        assert statistics.median(took) < 0.5
    finally:
        server.terminate()
