"""PostgreSQL put in read-only mode under the replicas: a DBA's maintenance step
(`default_transaction_read_only`, during an upgrade or a migration's cut-over), or a
connection that lands on a hot standby.

Every write then fails with read_only_sql_transaction (SQLSTATE 25006). It used to be
INTERNAL with a traceback per call, health SERVING: load balancers kept sending writes,
callers did not retry, and the operator read stack traces. Now it is UNAVAILABLE
(reason STORE_READ_ONLY: retryable, nothing kept), health says NOT_SERVING while it
lasts, reads go on, and writes work again as soon as the database takes them.
(Run with KEYTURN_TEST_BACKEND=postgres.)"""

from __future__ import annotations

import asyncio
import os

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn.v1 import handles_pb2
from keyturn_server.app import FLUSH_INTERVAL
from tests.harness import Failure, Harness, failure, health_becomes

pytestmark = pytest.mark.postgres


def set_read_only(server: Harness, on: bool, *, end_sessions: bool = True) -> None:
    """Set the server's database read-only (or not) for new sessions, and end its
    sessions (they keep the setting they started with) so that the store reconnects."""
    url = server.settings.store
    assert url is not None
    name = url.rsplit("/", 1)[1]
    # From the cluster's own database: new sessions of this one are read-only too.
    with psycopg.connect(os.environ["KEYTURN_TEST_POSTGRES_URL"], autocommit=True) as conn:
        conn.execute(
            f"ALTER DATABASE {name} SET default_transaction_read_only = {'on' if on else 'off'}"  # type: ignore[arg-type]
        )
        if end_sessions:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


async def validation(server: Harness, token: str) -> Failure | None:
    try:
        await server.admin.handles.ValidateHandle(handles_pb2.ValidateHandleRequest(token=token))
    except grpc.aio.AioRpcError as error:
        return failure(error)
    return None


async def settled(server: Harness, token: str, within: float = 15) -> Failure | None:
    """The outcome of a validation once the store has reconnected (its sessions were
    ended: until then calls are UNAVAILABLE with STORE_UNAVAILABLE)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        outcome = await validation(server, token)
        if outcome is None or outcome.reason != "STORE_UNAVAILABLE":
            return outcome
        assert asyncio.get_running_loop().time() < deadline, outcome
        await asyncio.sleep(0.2)


async def test_a_read_only_database_refuses_writes_as_unavailable_and_recovers(
    server: Harness,
) -> None:
    made = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    health = health_pb2_grpc.HealthStub(server.channel())
    set_read_only(server, True)
    refused = await settled(server, made.token)
    assert refused is not None
    assert refused.code == grpc.StatusCode.UNAVAILABLE, refused
    assert refused.reason == "STORE_READ_ONLY"
    again = await validation(server, made.token)
    assert again is not None and again.reason == "STORE_READ_ONLY"  # the same, every time
    read = await server.admin.handles.GetHandle(
        handles_pb2.GetHandleRequest(handle_id=made.handle.id)
    )
    assert read.usage_count == 0  # nothing of the refused validations was kept
    assert await health_becomes(health, health_pb2.HealthCheckResponse.NOT_SERVING)

    # Load balancers send nothing more to a replica that says NOT_SERVING. Once its last
    # writes of its own are done (usage counts are flushed every five seconds), nothing
    # would write again: it has to find out by itself that the database takes writes
    # again, or it never serves again. Turned back without ending the sessions: those
    # made while it was read-only stay so, and are replaced before they fail a caller.
    await asyncio.sleep(FLUSH_INTERVAL + 1)
    set_read_only(server, False, end_sessions=False)
    assert await health_becomes(health, health_pb2.HealthCheckResponse.SERVING)
    assert await validation(server, made.token) is None
