"""Row MACs (store/integrity.py): what each covers, table by table, and what happens around
a row that fails — the scheduler goes on with the others instead of failing or spinning."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.crypto.integrity import Protection
from keyturn_server.domain.handles import (
    Handle,
    HandleSchedule,
    HandleSecret,
    HandleState,
    RateWindow,
)
from keyturn_server.store.integrity import (
    KEY_COLUMNS,
    TOKEN_COLUMNS,
    VERSION_COLUMNS,
    RowIntegrity,
    columns_of,
    handle_fields,
    secret_fields,
)
from tests.harness import Harness, fails
from tests.security.database import run_sql, tamper
from tests.test_metrics import scrape

T0 = datetime(2031, 1, 1, tzinfo=UTC)
HANDLE = Handle(
    id="hdl_aaaaaaaaaaaaaaaa",
    type="session",
    algorithm="sha256",
    state=HandleState.ACTIVE,
    owner="billing",
    created_for="u1",
    context={"ip": "10.0.0.1"},
    usage_count=3,
    max_usage=10,
    create_time=T0,
    rotate_time=T0 + timedelta(hours=1),
    expire_time=T0 + timedelta(hours=24),
    warn_time=T0 + timedelta(minutes=50),
    schedule=HandleSchedule(*(timedelta(hours=h) for h in (1, 0.2, 24, 0.2))),
    bound_ip="10.0.0.1",
    rate=RateWindow(T0, 1, 2),
)
LATER = T0 + timedelta(days=300)

#: Each rights-bearing field of a handle, and a forged value for it.
HANDLE_FORGERIES: dict[str, Any] = {
    "owner": "thief",
    "state": HandleState.REVOKED,
    "usage_count": 0,
    "max_usage": 10**6,
    "expire_time": LATER,
    "rotate_time": LATER,
    "generation": 7,
    "bound_ip": "203.0.113.9",
    "bound_user_agent": "curl",
    "type": "api",
    "schedule": HandleSchedule(*(timedelta(days=d) for d in (1, 1, 300, 300))),
    "rate": RateWindow(T0, 0, 0),
}
#: Fields that grant nothing (or change outside the record), left out on purpose.
HANDLE_FREE: dict[str, Any] = {
    "context": {"purpose": "x"},
    "notify_time": LATER,
    "last_used_time": LATER,
    "anomaly_count": 9,
    "revoke_reason": "why",
    "created_for": "someone",
}


@pytest.mark.parametrize("field", HANDLE_FORGERIES)
def test_a_handles_mac_covers_what_grants_rights(field: str) -> None:
    forged = dataclasses.replace(HANDLE, **{field: HANDLE_FORGERIES[field]})
    assert handle_fields(forged) != handle_fields(HANDLE)


@pytest.mark.parametrize("field", HANDLE_FREE)
def test_a_handles_mac_leaves_out_what_grants_nothing(field: str) -> None:
    changed = dataclasses.replace(HANDLE, **{field: HANDLE_FREE[field]})
    assert handle_fields(changed) == handle_fields(HANDLE)


SECRET = HandleSecret(b"\x01" * 32, HANDLE.id, 1, T0)


@pytest.mark.parametrize(
    "change",
    [
        {"handle_id": "hdl_bbbbbbbbbbbbbbbb"},
        {"generation": 2},
        {"grace_until": LATER},
        {"superseded_time": None, "grace_until": LATER},
        {"digest": b"\x02" * 32},
    ],
)
def test_a_secrets_mac_covers_its_handle_generation_and_grace(change: dict[str, Any]) -> None:
    assert secret_fields(dataclasses.replace(SECRET, **change)) != secret_fields(SECRET)


@pytest.mark.parametrize(
    ("columns", "covered", "free"),
    [
        (
            KEY_COLUMNS,
            ("owner", "state", "exportable", "expire_time", "destroy_time"),
            ("usage_count", "last_used_time", "material"),
        ),
        (VERSION_COLUMNS, ("state", "expire_time", "public_pem", "nonces_reserved"), ("material",)),
        (
            TOKEN_COLUMNS,
            ("role", "name", "digest", "revoke_time", "expire_time"),
            ("last_used_time",),
        ),
    ],
    ids=["keys", "key_versions", "access_tokens"],
)
def test_column_coverage(
    columns: tuple[str, ...], covered: tuple[str, ...], free: tuple[str, ...]
) -> None:
    assert set(covered) <= set(columns)
    assert not set(free) & set(columns)


def test_a_tag_is_bound_to_its_table_and_its_key() -> None:
    one = RowIntegrity(Protection.derived_from(b"a" * 32))
    other = RowIntegrity(Protection.derived_from(b"b" * 32))
    row = {c: c for c in TOKEN_COLUMNS}
    fields = columns_of(row, TOKEN_COLUMNS)
    tag = one.tag("access_tokens", fields)
    assert one.intact("access_tokens", fields, tag, "x")
    assert not one.intact("config", fields, tag, "x")  # a row copied into another table
    assert not other.intact("access_tokens", fields, tag, "x")  # another keyring
    assert not one.intact("access_tokens", fields, None, "x")  # a cleared MAC
    assert one.tampered == {"config": 1, "access_tokens": 1}


def test_bytes_are_covered_as_hex() -> None:
    fields = columns_of({"digest": memoryview(b"\x00\xff")}, ("digest",))
    assert fields == ("00ff",)


async def test_a_tampered_handle_does_not_stall_the_scheduler(server: Harness) -> None:
    forged = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    other = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    await tamper(server, ("UPDATE handles SET owner = 'x' WHERE id = ?", (forged.handle.id,)))
    await server.advance(timedelta(minutes=5))  # both are due to rotate
    rotated = await server.admin.handles.GetHandle(
        handles_pb2.GetHandleRequest(handle_id=other.handle.id)
    )
    assert rotated.generation == 2
    assert server.app is not None and server.app.services is not None
    scheduler = server.app.services.scheduler
    passes = scheduler.passes
    await asyncio.sleep(0.3)
    assert scheduler.passes - passes < 5  # it sleeps: the forged row is no longer due
    assert scheduler.failures == 0


async def test_tampered_rows_are_counted_in_statistics_and_metrics(server: Harness) -> None:
    created = await server.admin.admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(name="billing", role=resources_pb2.ROLE_SERVICE)
    )
    await server.stop()
    run_sql(server, "UPDATE access_tokens SET role = 'ADMIN' WHERE name = 'billing'")
    await server.start(metrics_listen="127.0.0.1:0")
    refused = await fails(server.client(created.token).keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED
    assert server.app is not None and server.app.metrics_port is not None
    text = await asyncio.to_thread(scrape, server.app.metrics_port)
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('keyturn_tampered_rows_total{table="access_tokens"}')
    ]
    stats = await server.admin.keys.GetKeyStatistics(keys_pb2.GetKeyStatisticsRequest())
    # Every read that meets the row counts: the start's look at the tokens, the refusal.
    assert counted == [stats.statistics.integrity_failures] and counted[0] >= 2


async def test_the_counters_a_validation_writes_are_covered_and_read_back(
    server: Harness,
) -> None:
    # A plain use rewrites only the counters (and the MAC); binding the context takes the
    # general path. Read back by a new process memory, every row must authenticate.
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    request = handles_pb2.ValidateHandleRequest(token=issued.token, context={"ip": "10.0.0.1"})
    for _ in range(3):
        assert (await server.admin.handles.ValidateHandle(request)).validation.valid
        await server.advance(timedelta(seconds=50))  # the rate window rolls over
    await server.restart()
    read = await server.admin.handles.GetHandle(
        handles_pb2.GetHandleRequest(handle_id=issued.handle.id)
    )
    assert read.usage_count == 3
    assert read.last_used_time.ToDatetime(UTC) == server.clock.now() - timedelta(seconds=50)
    assert (await server.admin.handles.ValidateHandle(request)).validation.valid
    await tamper(server, ("UPDATE handles SET usage_count = 0 WHERE id = ?", (issued.handle.id,)))
    refused = await fails(
        server.admin.handles.GetHandle(handles_pb2.GetHandleRequest(handle_id=issued.handle.id))
    )
    assert refused.code == grpc.StatusCode.DATA_LOSS
