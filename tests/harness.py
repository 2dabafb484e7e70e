"""A real Keyturn server on a free port, a fake clock, and real gRPC channels to it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyturn import InvalidArgument, ResourceExhausted
from keyturn._errors import from_rpc_error
from keyturn.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    handles_pb2_grpc,
    keys_pb2_grpc,
    resources_pb2,
)
from keyturn_server.app import App
from keyturn_server.clock import ManualClock
from keyturn_server.domain.events import Event
from keyturn_server.domain.repositories import Repository, SealedKind, SealedValue, Store
from keyturn_server.settings import Settings
from keyturn_server.store.sqlite import SqliteStore

MASTER_KEY = "6b65797475726e2d746573742d6d61737465722d6b65792d3332627974657321"

#: Every secret a test was handed (tokens, key material): the log guard in conftest
#: checks that none of them ever reaches a log line.
SECRETS: set[str] = {MASTER_KEY}


def remember_secrets(message: Any) -> None:
    """Record the secret fields of a response (``token``, ``material``), recursively."""
    if not hasattr(message, "ListFields"):
        return
    for field, value in message.ListFields():
        if field.name in ("token", "material") and value:
            SECRETS.add(value.hex() if isinstance(value, bytes) else value)
        elif field.message_type is not None:
            if field.is_repeated:
                items = value.values() if hasattr(value, "values") else value
                for item in items:
                    remember_secrets(item)
            else:
                remember_secrets(value)


class Client:
    """Stubs that send one principal's bearer token."""

    def __init__(self, channel: grpc.aio.Channel, token: str | None) -> None:
        self.channel = channel
        self.token = token
        self.metadata: Sequence[tuple[str, str]] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.keys = _Bound(keys_pb2_grpc.KeyServiceStub(channel), self.metadata)
        self.handles = _Bound(handles_pb2_grpc.HandleServiceStub(channel), self.metadata)
        self.admin = _Bound(admin_pb2_grpc.AdminServiceStub(channel), self.metadata)


class _Bound:
    """A stub whose calls carry the client's metadata unless told otherwise."""

    def __init__(self, stub: Any, metadata: Sequence[tuple[str, str]]) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", self._metadata)
            kwargs.setdefault("timeout", 30)
            if isinstance(method, grpc.aio.UnaryUnaryMultiCallable):
                return _remembering(method(request, **kwargs))
            return method(request, **kwargs)

        return call


async def _remembering(call: Any) -> Any:
    response = await call
    remember_secrets(response)
    return response


#: "sqlite" (default) or "postgres": the same tests run against either store.
BACKEND = os.environ.get("KEYTURN_TEST_BACKEND", "sqlite")


def fresh_postgres_database() -> str:
    """A new, empty database in the test PostgreSQL cluster; its URL."""
    import psycopg

    base = os.environ["KEYTURN_TEST_POSTGRES_URL"]
    name = "kt_" + secrets.token_hex(6)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return base.rsplit("/", 1)[0] + "/" + name


def open_store(directory: Path) -> Store:
    """A fresh store on its own: a new PostgreSQL database under
    KEYTURN_TEST_BACKEND=postgres, else a SQLite file in ``directory`` (keys not set)."""
    if BACKEND == "postgres":
        from keyturn_server.store.postgres import PostgresStore

        return PostgresStore(fresh_postgres_database())
    return SqliteStore(directory / "keyturn.db")


class Harness:
    def __init__(self, data_dir: Path, clock: ManualClock, **overrides: Any) -> None:
        self.data_dir = data_dir
        self.clock = clock
        if BACKEND == "postgres" and "store" not in overrides:
            overrides["store"] = fresh_postgres_database()
        self.settings = Settings(
            listen=("127.0.0.1:0",),
            http_listen=("127.0.0.1:0",),
            data_dir=data_dir,
            master_key=MASTER_KEY,
            caller_rate_limit=0,
            grace_period=timedelta(seconds=1),
            **overrides,
        )
        self.app: App | None = None
        self._channels: list[grpc.aio.Channel] = []
        self.admin: Client

    async def start(self, **overrides: Any) -> Harness:
        if overrides:
            self.settings = dataclasses.replace(self.settings, **overrides)
        self.app = App(self.settings, self.clock)
        try:
            await self.app.start()
        except BaseException:
            # A half-started app still holds its store (and perhaps a port): close it.
            app, self.app = self.app, None
            await app.stop(timedelta(seconds=0.2))
            raise
        self.admin_token = (self.data_dir / "admin.token").read_text().strip()
        SECRETS.add(self.admin_token)
        self.admin = self.client(self.admin_token)
        return self

    @property
    def address(self) -> str:
        assert self.app is not None
        return self.app.address

    @property
    def http_url(self) -> str:
        """The HTTP/JSON listener, e.g. http://127.0.0.1:41234."""
        assert self.app is not None and self.app.http is not None
        return self.app.http.addresses[0]

    def channel(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(self.address)
        self._channels.append(channel)
        return channel

    def client(self, token: str | None) -> Client:
        return Client(self.channel(), token)

    async def client_for(self, role: str, name: str | None = None) -> Client:
        """A client with a fresh access token of ``role`` ("service", "auditor"...)."""
        name = name or f"{role}-{len(self._channels)}"
        created = await self.admin.admin.CreateAccessToken(
            admin_pb2.CreateAccessTokenRequest(
                name=name, role=resources_pb2.Role.Value(f"ROLE_{role.upper()}")
            )
        )
        return self.client(created.token)

    async def set_policies(self, **policies: Any) -> None:
        """Change some security policies (GetConfig, then UpdateConfig with its etag)."""
        config = await self.admin.admin.GetConfig(admin_pb2.GetConfigRequest())
        await self.admin.admin.UpdateConfig(
            admin_pb2.UpdateConfigRequest(
                config=admin_pb2.Config(security_policies=admin_pb2.SecurityPolicies(**policies)),
                update_mask={"paths": [f"security_policies.{name}" for name in policies]},
                etag=config.etag,
            )
        )

    # What is stored, read through the repository whatever the backend:

    async def events(self) -> list[Event]:
        """The event log as stored, in sequence order."""
        assert self.app is not None

        def read_all(repo: Repository) -> list[Event]:
            found: list[Event] = []
            while batch := repo.events_after(found[-1].sequence if found else 0, 1000):
                found.extend(batch)
            return found

        return await self.app.store.report(read_all)

    async def sealed_material(self, key_id: str, version: int) -> bytes | None:
        assert self.app is not None
        return await self.app.store.report(lambda repo: repo.sealed_material(key_id, version))

    async def sealed_values(self, kind: SealedKind) -> list[SealedValue]:
        """Every value of ``kind`` sealed under the master key."""
        assert self.app is not None
        return await self.app.store.report(lambda repo: repo.sealed_after(kind, None, 100_000))

    async def settle(self) -> None:
        """Let the scheduler act on everything due at the clock's current time."""
        assert self.app is not None and self.app.services is not None
        await self.app.services.scheduler.settle()

    async def advance(self, delta: timedelta) -> None:
        self.clock.advance(delta)
        await self.settle()

    async def stop(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        if self.app is not None:
            await self.app.stop(timedelta(seconds=0.2))
            self.app = None

    async def restart(self, **overrides: Any) -> Harness:
        await self.stop()
        return await self.start(**overrides)


@dataclasses.dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    violations: dict[str, str]
    retry_after: timedelta | None


def failure(error: grpc.aio.AioRpcError) -> Failure:
    """The status of a failed call, with its google.rpc details unpacked (by the Python
    client's own parsing)."""
    parsed = from_rpc_error(error)
    violations = (
        {v.field: v.description for v in parsed.field_violations}
        if isinstance(parsed, InvalidArgument)
        else {}
    )
    retry = parsed.retry_after if isinstance(parsed, ResourceExhausted) else None
    return Failure(
        error.code(), error.details() or "", parsed.reason, parsed.metadata, violations, retry
    )


async def fails(call: Any) -> Failure:
    """Await a call that must fail and return how it failed."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return failure(error)
    raise AssertionError("the call succeeded but was expected to fail")


async def health_becomes(
    health: health_pb2_grpc.HealthStub, status: int, within: float = 10
) -> bool:
    """Whether grpc.health.v1 says ``status`` within ``within`` seconds, asked nothing else
    (as a load balancer that sends a NOT_SERVING server no calls)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        if answer.status == status:
            return True
        await asyncio.sleep(0.1)
    return False
