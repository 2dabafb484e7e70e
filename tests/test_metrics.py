"""Prometheus metrics on --metrics-listen."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from datetime import UTC, timedelta

import pytest

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from tests.harness import Harness


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def scrape_now(server: Harness) -> str:
    assert server.app is not None and server.app.metrics is not None
    services = server.app.services
    assert services is not None
    await server.app.metrics.refresh(
        server.app.store, server.clock, services.scheduler, len(services.hub)
    )
    port = server.app.metrics_port
    assert port is not None
    return await asyncio.to_thread(scrape, port)


async def test_metrics_cover_rpcs_records_events_and_key_deadlines(server: Harness) -> None:
    await server.restart(metrics_listen="127.0.0.1:0", metrics_per_resource=True)
    assert server.app is not None and server.app.metrics is not None
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    await server.admin.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=issued.token, context={"ip": "10.0.0.1"})
    )
    await server.admin.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=issued.token, context={"ip": "10.0.0.2"})
    )  # context drift: an anomaly
    text = await scrape_now(server)
    assert (
        'keyturn_rpc_requests_total{code="OK",method="/keyturn.v1.KeyService/GenerateKey"} 1.0'
    ) in text
    assert (
        'keyturn_rpc_duration_seconds_count{method="/keyturn.v1.HandleService/'
        'ValidateHandle"} 2.0' in text
    )
    assert 'keyturn_keys{status="ACTIVE",type="encryption"} 1.0' in text
    assert 'keyturn_handles{status="ACTIVE",type="device"} 1.0' in text
    assert 'keyturn_anomalies_total{kind="CONTEXT_DRIFT"} 1.0' in text
    assert 'keyturn_events_total{kind="CREATED",subject="key"} 1.0' in text
    [line] = [
        ln
        for ln in text.splitlines()
        if ln.startswith("keyturn_key_expiry_timestamp_seconds") and key.id in ln
    ]
    assert (
        float(line.rsplit(" ", 1)[1])
        == key.expire_time.ToDatetime().replace(tzinfo=UTC).timestamp()
    )
    assert "keyturn_scheduler_lag_seconds 0.0" in text
    assert issued.token not in text


async def test_by_default_metrics_name_no_key_only_the_first_deadline_by_type(
    server: Harness,
) -> None:
    await server.restart(metrics_listen="127.0.0.1:0")
    first = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    server.clock.advance(timedelta(hours=1))
    later = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    text = await scrape_now(server)
    assert first.id not in text and later.id not in text
    assert "keyturn_key_expiry_timestamp_seconds" not in text
    expiry = first.expire_time.ToDatetime().replace(tzinfo=UTC).timestamp()
    rotation = first.next_rotation_time.ToDatetime().replace(tzinfo=UTC).timestamp()
    assert sample(text, 'keyturn_keys_next_expiry_timestamp_seconds{type="session"}') == expiry
    assert sample(text, 'keyturn_keys_next_rotation_timestamp_seconds{type="session"}') == rotation


def sample(text: str, series: str) -> float:
    [line] = [ln for ln in text.splitlines() if ln.startswith(series + " ")]
    return float(line.rsplit(" ", 1)[1])


async def test_metrics_show_the_oldest_overdue_deadline_the_leader_and_the_store(
    server: Harness,
) -> None:
    await server.restart(metrics_listen="127.0.0.1:0")
    await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    text = await scrape_now(server)
    assert sample(text, "keyturn_scheduler_oldest_overdue_seconds") == 0
    assert sample(text, "keyturn_scheduler_leader") == 1
    assert sample(text, "keyturn_scheduler_lease_epoch") >= 1
    assert sample(text, "keyturn_store_up") == 1
    assert server.app is not None and server.app.services is not None
    await server.app.services.scheduler.stop()  # nobody schedules: due work ages
    server.clock.advance(timedelta(minutes=4, seconds=30))  # the warning was due at 4 min
    text = await scrape_now(server)
    assert sample(text, "keyturn_scheduler_oldest_overdue_seconds") == 30


@pytest.mark.sqlite_only  # the store's file is removed from under it
async def test_the_scheduler_figures_go_on_while_the_store_cannot_write(server: Harness) -> None:
    await server.restart(metrics_listen="127.0.0.1:0")
    await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    assert server.app is not None and server.app.services is not None
    await server.app.services.scheduler.stop()
    text = await scrape_now(server)
    assert sample(text, "keyturn_scheduler_oldest_overdue_seconds") == 0
    (server.data_dir / "keyturn.db").unlink()  # from now on every write is refused
    server.clock.advance(timedelta(minutes=4, seconds=30))  # the warning was due at 4 min
    text = await scrape_now(server)
    assert sample(text, "keyturn_store_up") == 0
    # Not the last figure read before the outage: the work it holds up, as it ages.
    assert sample(text, "keyturn_scheduler_oldest_overdue_seconds") == 30
    assert sample(text, "keyturn_scheduler_lag_seconds") == 30
    report = await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="scheduler"))
    [part] = report.health.components
    assert part.status == admin_pb2.SERVING_STATUS_NOT_SERVING
    assert part.scheduler.lag.seconds == 30, part


async def test_a_taken_metrics_port_stops_the_start_before_anything_is_made(
    server: Harness,
) -> None:
    await server.stop()
    fresh = server.data_dir.parent / "fresh"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=f"cannot listen on {address}.*--metrics-listen"):
            await server.start(data_dir=fresh, metrics_listen=address)
    assert not fresh.exists()  # one line, before a keyring or a store was made
