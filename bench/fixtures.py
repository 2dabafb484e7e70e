"""What the benchmarks need inside a Keyturn server, made through its public API: a
handle type that does not run out under load, handles, keys and a ciphertext."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from keyturn.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    handles_pb2,
    handles_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
)

#: The custom handle type of the benchmarks: far from exhaustion and rotation.
HANDLE_TYPE = "bench"
HANDLE_LENGTH = 32
HANDLE_ROTATION = timedelta(days=30)
HANDLE_WARNING = timedelta(days=1)
HANDLE_LIFETIME = timedelta(days=365)
MAX_USAGE = 1_000_000_000  # the server's upper bound for max_usage
#: Per-handle validations per minute and active handles per owner: both at the
#: server's upper bound, so that neither limit is what a benchmark measures.
POLICY_LIMIT = 10_000_000
KEY_TYPES = ("encryption", "signing", "session", "api")
PLAINTEXT = b"k" * 256


def _duration(delta: timedelta) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(delta)
    return message


class Admin:
    """The admin principal's stubs on one channel."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.keys = keys_pb2_grpc.KeyServiceStub(self.channel)
        self.handles = handles_pb2_grpc.HandleServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(None)

    async def configure(self) -> None:
        """Add the ``bench`` handle type and lift the per-handle rate limit and the
        per-owner handle limit (AdminService.UpdateConfig with an update mask)."""
        current = await self.admin.GetConfig(
            admin_pb2.GetConfigRequest(), metadata=self.metadata, timeout=30
        )
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
        await self.admin.UpdateConfig(
            admin_pb2.UpdateConfigRequest(
                config=config,
                etag=current.etag,
                update_mask=field_mask_pb2.FieldMask(
                    paths=[
                        f"handle_types.{HANDLE_TYPE}",
                        "security_policies.rate_limit_per_handle",
                        "security_policies.max_concurrent_handles",
                    ]
                ),
                reason="benchmark setup",
            ),
            metadata=self.metadata,
            timeout=30,
        )

    async def generate_handles(self, count: int) -> list[tuple[str, str]]:
        """``count`` handles of the bench type: (handle id, token)."""

        async def one() -> tuple[str, str]:
            reply = await self.handles.GenerateHandle(
                handles_pb2.GenerateHandleRequest(type=HANDLE_TYPE),
                metadata=self.metadata,
                timeout=60,
            )
            return reply.handle.id, reply.token

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def generate_key(self, key_type: str) -> str:
        reply = await self.keys.GenerateKey(
            keys_pb2.GenerateKeyRequest(type=key_type), metadata=self.metadata, timeout=60
        )
        return str(reply.key.id)

    async def encrypt(self, key_id: str, plaintext: bytes) -> bytes:
        reply = await self.keys.Encrypt(
            keys_pb2.EncryptRequest(key_id=key_id, plaintext=plaintext),
            metadata=self.metadata,
            timeout=30,
        )
        return bytes(reply.ciphertext)


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
    admin = Admin(address, token)
    try:
        await admin.configure()
        pairs = await admin.generate_handles(handles)
        encryption = await admin.generate_key("encryption")
        signing = await admin.generate_key("signing")
        ciphertext = await admin.encrypt(encryption, PLAINTEXT)
        return Fixtures([t for _, t in pairs], encryption, signing, ciphertext)
    finally:
        await admin.close()
