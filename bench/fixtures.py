"""What the benchmarks need inside a Keyturn server, made through its public API: a
handle type that does not run out under load, handles, keys and a ciphertext."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2

from keyturn import AsyncClient
from keyturn.v1 import admin_pb2

#: The custom handle type of the benchmarks: far from exhaustion and rotation.
HANDLE_TYPE = "bench"
HANDLE_LENGTH = 32
HANDLE_ROTATION = timedelta(days=30)
HANDLE_WARNING = timedelta(days=1)
HANDLE_LIFETIME = timedelta(days=365)
MAX_USAGE = 1_000_000_000  # the server's upper bound for max_usage
#: Per-handle validations per minute, active handles and keys per owner: at the
#: server's upper bound, so that no limit is what a benchmark measures.
POLICY_LIMIT = 10_000_000
KEY_TYPES = ("encryption", "signing", "session", "api")
PLAINTEXT = b"k" * 256


def _duration(delta: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(delta)
    return message


async def configure(client: AsyncClient) -> None:
    """Add the ``bench`` handle type and lift the per-handle rate limit and the per-owner
    handle and key limits (AdminService.UpdateConfig with an update mask)."""
    current = await client.get_config()
    config = admin_pb2.Config()
    config.handle_types[HANDLE_TYPE].CopyFrom(
        admin_pb2.HandleTypeConfig(
            algorithm="sha256",
            handle_length=HANDLE_LENGTH,
            rotation_interval=_duration(HANDLE_ROTATION),
            warning_threshold=_duration(HANDLE_WARNING),
            max_lifetime=_duration(HANDLE_LIFETIME),
            max_usage=MAX_USAGE,
        )
    )
    config.security_policies.rate_limit_per_handle = POLICY_LIMIT
    config.security_policies.max_concurrent_handles = POLICY_LIMIT
    config.security_policies.max_keys_per_owner = POLICY_LIMIT
    await client.update_config(
        config,
        etag=current.etag,
        update_mask=[
            f"handle_types.{HANDLE_TYPE}",
            "security_policies.rate_limit_per_handle",
            "security_policies.max_concurrent_handles",
            "security_policies.max_keys_per_owner",
        ],
        reason="benchmark setup",
    )


async def generate_handles(client: AsyncClient, count: int) -> list[tuple[str, str]]:
    """``count`` handles of the bench type: (handle id, token)."""
    replies = await asyncio.gather(*(client.generate_handle(HANDLE_TYPE) for _ in range(count)))
    return [(reply.handle.id, reply.token) for reply in replies]


def admin_client(address: str, token: str) -> AsyncClient:
    """The admin principal's client, with room for a busy server."""
    return AsyncClient(address, token=token, timeout=60)


@dataclass(frozen=True)
class Fixtures:
    """Ids and secrets the per-RPC benchmarks send."""

    tokens: Sequence[str]
    encryption_key: str
    signing_key: str
    ciphertext: bytes

    def as_json(self) -> dict[str, Any]:
        return {"handles": len(self.tokens)}


async def prepare(address: str, token: str, handles: int) -> Fixtures:
    """Configure the server and create what the per-RPC benchmarks use."""
    async with admin_client(address, token) as client:
        await configure(client)
        pairs = await generate_handles(client, handles)
        encryption = (await client.generate_key("encryption")).key.id
        signing = (await client.generate_key("signing")).key.id
        ciphertext = (await client.encrypt(encryption, PLAINTEXT)).ciphertext
        return Fixtures([t for _, t in pairs], encryption, signing, ciphertext)
