"""What a store failure tells a caller who does not run the service.

While the database is away (PostgreSQL unreachable) or its file is lost, every caller
used to read the raw database error in its UNAVAILABLE message and in GetHealth's
reasons: the database's host, port and name, the data directory's path. A tenant of a
KMS learns only that the service is unavailable (with a retryable reason code in
ErrorInfo); the detail is for the operators (roles that may read diagnostics: admin and
operator), the log and the metrics. Over gRPC and both HTTP surfaces alike.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any

import grpc
import psycopg
import pytest

from keyturn.v1 import admin_pb2, keys_pb2
from tests.harness import Client, Harness, fails
from tests.http_support import HttpClient


def reasons_of(health: admin_pb2.Health) -> str:
    return " ".join(reason for c in health.components for reason in c.reasons)


async def health_reasons(client: Client) -> str:
    answer = await client.admin.GetHealth(admin_pb2.GetHealthRequest())
    assert answer.health.status == admin_pb2.SERVING_STATUS_NOT_SERVING
    return reasons_of(answer.health)


async def http_health(server: Harness, client: Client) -> str:
    """Both HTTP surfaces' health answers, as one text."""
    http = HttpClient(server.http_url, client.token)
    v1 = await http.get("/v1/health")
    spec = await http.get("/api/key-management/health")
    assert v1.status == 200 and spec.status == 503, (v1.text, spec.text)
    return v1.text + spec.text


async def http_refusal(server: Harness, client: Client) -> tuple[Any, Any]:
    http = HttpClient(server.http_url, client.token)
    v1 = await http.post("/v1/keys", {"type": "encryption"})
    spec = await http.post("/api/key-management/keys/generate", {"type": "encryption"})
    return v1, spec


@pytest.mark.sqlite_only
async def test_a_lost_database_file_is_named_to_operators_only(server: Harness) -> None:
    service = await server.client_for("service")
    operator = await server.client_for("operator")
    auditor = await server.client_for("auditor")
    shutil.rmtree(server.data_dir)  # a clean-up script, the wrong directory
    refused = await fails(service.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption")))
    assert refused.code == grpc.StatusCode.UNAVAILABLE and refused.reason == "STORE_FILE_GONE"

    hidden = str(server.data_dir)
    told = await health_reasons(service)
    assert "the store cannot take changes" in told and hidden not in told, told
    assert hidden not in await http_health(server, service)
    assert hidden not in await health_reasons(auditor)
    assert hidden in await health_reasons(operator)  # what to restore, and where
    assert hidden in await health_reasons(server.admin)


def _refuse_connections(server: Harness) -> None:
    """The server's database refuses new sessions and its sessions end: to the server it
    is unreachable, and libpq's message names the host, the port and the database."""
    url = server.settings.store
    assert url is not None
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(os.environ["KEYTURN_TEST_POSTGRES_URL"], autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")  # type: ignore[arg-type]
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


def _allow_connections(server: Harness) -> None:
    url = server.settings.store
    assert url is not None
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(os.environ["KEYTURN_TEST_POSTGRES_URL"], autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")  # type: ignore[arg-type]


@pytest.mark.postgres
async def test_an_unreachable_database_is_described_to_operators_only(server: Harness) -> None:
    service = await server.client_for("service")
    operator = await server.client_for("operator")
    url = server.settings.store
    assert url is not None
    database = url.rsplit("/", 1)[1]
    port = url.rsplit(":", 1)[1].split("/")[0]
    for caller in (service, operator):  # known: a token verified before still is
        await caller.admin.GetHealth(admin_pb2.GetHealthRequest())
    _refuse_connections(server)
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            refused = await fails(
                service.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
            )
            if refused.code == grpc.StatusCode.UNAVAILABLE and database in str(
                await health_reasons(operator)
            ):
                break
            assert asyncio.get_running_loop().time() < deadline, refused
            await asyncio.sleep(0.2)
        assert refused.reason == "STORE_UNAVAILABLE"
        v1, spec = await http_refusal(server, service)
        assert v1.status == spec.status == 503
        told = [
            refused.message,
            await health_reasons(service),
            await http_health(server, service),
            v1.text,
            spec.text,
        ]
        for text in told:
            assert database not in text and port not in text and "127.0.0.1" not in text, text
        # The operators read what libpq said.
        assert database in await health_reasons(operator)
        seen = await fails(
            operator.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
        )
        assert seen.reason == "STORE_UNAVAILABLE" and database in seen.message
    finally:
        _allow_connections(server)
