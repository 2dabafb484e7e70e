"""AES-GCM with random 96-bit nonces allows about 2^32 encryptions per key (NIST SP
800-38D); past that a repeated nonce becomes likely, and one repeat gives away the XOR of
two plaintexts and the authentication key. Encryptions are counted per key version,
durably; a key rotates when its primary has used half of the budget, and no version is
ever used past it. The tests move the budget down instead of encrypting 2^32 times."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from keyturn.v1 import admin_pb2, keys_pb2
from tests.harness import Harness, fails
from tests.security.database import query, tamper


async def _encryption_key(server: Harness) -> str:
    created = await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
    return created.key.id


async def _encrypt(server: Harness, key_id: str, n: int) -> list[keys_pb2.EncryptResponse]:
    return [
        await server.admin.keys.Encrypt(
            keys_pb2.EncryptRequest(key_id=key_id, plaintext=f"record {i}".encode())
        )
        for i in range(n)
    ]


async def _reserved(server: Harness, key_id: str) -> dict[int, int]:
    """Encryptions reserved per version, as stored."""
    found = query(
        server, "SELECT version, nonces_reserved FROM key_versions WHERE key_id = ?", (key_id,)
    )
    return {int(r["version"]): int(r["nonces_reserved"]) for r in found}


async def test_a_key_rotates_at_half_its_budget_and_no_version_passes_it(server: Harness) -> None:
    await server.restart(nonce_budget=64)
    key_id = await _encryption_key(server)
    sealed = await _encrypt(server, key_id, 150)

    per_version = Counter(s.key_version for s in sealed)
    assert len(per_version) >= 5  # rotated along the way
    assert max(per_version.values()) <= 32
    for version, reserved in (await _reserved(server, key_id)).items():
        assert per_version[version] <= reserved <= 64
    for i, s in enumerate(sealed):
        plain = await server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key_id, ciphertext=s.ciphertext)
        )
        assert plain.plaintext == f"record {i}".encode()
    rotations = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="key.rotate", resource_id=key_id)
    )
    assert len(rotations.events) == len(per_version) - 1
    assert all("nonce budget" in e.reason for e in rotations.events)


async def test_concurrent_encryptions_at_the_threshold_rotate_once(server: Harness) -> None:
    await server.restart(nonce_budget=16)
    key_id = await _encryption_key(server)
    sealed = await asyncio.gather(
        *[
            server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key_id, plaintext=b"x"))
            for _ in range(60)
        ]
    )
    per_version = Counter(s.key_version for s in sealed)
    assert max(per_version.values()) <= 8
    key = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key_id))
    assert len(key.versions) == len(per_version) or len(key.versions) == len(per_version) + 1


async def test_the_count_survives_a_restart_and_a_crash_only_wastes_budget(
    server: Harness,
) -> None:
    await server.restart(nonce_budget=4096)  # blocks of 4 encryptions
    key_id = await _encryption_key(server)
    await _encrypt(server, key_id, 5)
    assert (await _reserved(server, key_id))[1] == 8
    await server.restart()  # the 3 unspent of the second block are lost, never reused
    await _encrypt(server, key_id, 1)
    assert (await _reserved(server, key_id))[1] == 12


async def test_the_count_continues_across_restarts_up_to_the_rotation(server: Harness) -> None:
    await server.restart(nonce_budget=64)
    key_id = await _encryption_key(server)
    first = await _encrypt(server, key_id, 20)
    await server.restart()
    second = await _encrypt(server, key_id, 20)
    per_version = Counter(s.key_version for s in first + second)
    assert per_version[1] == 32 and per_version[2] == 8


async def test_decryptions_spend_no_budget(server: Harness) -> None:
    await server.restart(nonce_budget=64)
    key_id = await _encryption_key(server)
    (sealed,) = await _encrypt(server, key_id, 1)
    for _ in range(40):
        await server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key_id, ciphertext=sealed.ciphertext)
        )
    assert (await _reserved(server, key_id))[1] == 1


async def test_the_store_reserves_nothing_past_the_budget(server: Harness) -> None:
    key_id = await _encryption_key(server)
    assert server.app is not None
    store = server.app.store
    assert await store.write(lambda repo: repo.reserve_nonces(key_id, 1, 60, 64)) == 60
    assert await store.write(lambda repo: repo.reserve_nonces(key_id, 1, 5, 64)) is None
    assert await store.write(lambda repo: repo.reserve_nonces(key_id, 1, 4, 64)) == 64


@pytest.mark.parametrize("reset_to", [0, 1])
async def test_a_reset_count_in_the_database_is_refused(server: Harness, reset_to: int) -> None:
    """A writer who winds the count back would have nonces drawn again from a spent
    budget: the version's row fails its MAC instead."""
    await server.restart(nonce_budget=64)
    key_id = await _encryption_key(server)
    await _encrypt(server, key_id, 10)
    await tamper(
        server,
        (
            "UPDATE key_versions SET nonces_reserved = ? WHERE key_id = ?",
            (reset_to, key_id),
        ),
    )
    refused = await fails(
        server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key_id, plaintext=b"x"))
    )
    assert refused.code == grpc.StatusCode.DATA_LOSS
