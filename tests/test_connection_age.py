"""Connections are renewed, so load spreads again after a replica or a worker restarts.

A gRPC client keeps its connection for as long as it lives. Behind a layer-4 balancer
(a Kubernetes Service in front of several PostgreSQL replicas) or SO_REUSEPORT
(``--workers``), a replica or worker that restarted, or was added, got no calls from the
clients already connected: after a worker crash at peak, the other one kept the whole
load for good. The server now asks a client to reconnect once its connection is
``--max-connection-age`` old (GOAWAY; calls in progress, streams included, finish on the
old connection), as gRPC's server-side connection management (A9) intends.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from keyturn.v1 import admin_pb2, events_pb2, keys_pb2
from keyturn_server.clock import ManualClock
from keyturn_server.flags import add_serve_arguments, parse_connection_age
from keyturn_server.settings import (
    Settings,
    SettingsError,
    resolve,
)
from tests.harness import Harness

AGE = timedelta(seconds=1)


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path / "data", clock, max_connection_age=AGE)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


def client_ports(server_port: int) -> set[int]:
    """Local ports of the established TCP connections to ``server_port`` (this process's
    channels: the server runs in it too, but its own sockets have it as local port)."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == server_port:
                found.add(int(local.rsplit(":", 1)[1], 16))
    return found


async def test_a_connection_is_renewed_once_old_and_nothing_fails(server: Harness) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    watcher = server.client(server.admin_token)
    stream = watcher.keys.WatchExpiring(events_pb2.WatchExpiringRequest(), timeout=30)
    marker = await stream.read()
    while marker.kind != events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE:
        marker = await stream.read()
    await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest())
    first = client_ports(port)
    assert first
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10 * AGE.total_seconds()
    while not client_ports(port) - first:
        # Calls go on all along, and none fails: a call not yet sent on a connection
        # that is going away is sent on a new one.
        await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=5)
        assert loop.time() < deadline, "no connection was renewed"
        await asyncio.sleep(0.1)
    # The stream opened on an old connection goes on, and sees what happens now.
    made = await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
    while True:
        event = await asyncio.wait_for(stream.read(), 10)
        if event.kind == events_pb2.EVENT_KIND_CREATED:
            assert event.key.id == made.key.id
            break


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10m", timedelta(minutes=10)), ("off", None), ("0", None), ("2h", timedelta(hours=2))],
)
def test_the_flag(text: str, expected: timedelta | None) -> None:
    assert resolved("--max-connection-age", text).max_connection_age == expected
    assert resolved().max_connection_age == timedelta(minutes=10)


def test_the_flag_refuses_nonsense() -> None:
    with pytest.raises(SettingsError):
        parse_connection_age("5ms")


def resolved(*flags: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return resolve(parser.parse_args(["--data-dir", "/tmp/unused", *flags]), {})
