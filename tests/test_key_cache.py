"""The per-process cache of keys read for use in place (domain/key_cache.py): a change to a
key is seen by the very next call, a forged row is caught on the next read, and a key
that does not change is read from the store once. Several workers: test_workers.py;
replicas: test_replicas.py."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from keyturn.v1 import keys_pb2, resources_pb2
from tests.harness import Harness, fails
from tests.security.database import query

K = keys_pb2


async def _cached_key(server: Harness) -> resources_pb2.Key:
    """A new encryption key, used once so that this process holds it."""
    key = (await server.admin.keys.GenerateKey(K.GenerateKeyRequest(type="encryption"))).key
    await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"warm"))
    return key


async def test_a_removed_key_is_refused_by_the_next_call(server: Harness) -> None:
    key = await _cached_key(server)
    sealed = await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x"))
    await server.admin.keys.RemoveKey(K.RemoveKeyRequest(key_id=key.id, reason="leaked"))
    refused = await fails(
        server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"y"))
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "KEY_REMOVED"
    opened = await fails(
        server.admin.keys.Decrypt(K.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext))
    )
    assert opened.reason == "KEY_REMOVED"
    got = await server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert got.status == resources_pb2.KEY_STATUS_REMOVED
    # ... and back in use at once when restored.
    await server.admin.keys.RestoreKey(K.RestoreKeyRequest(key_id=key.id))
    again = await server.admin.keys.Decrypt(
        K.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
    )
    assert again.plaintext == b"x"


async def test_a_rotated_key_encrypts_with_its_new_primary_at_once(server: Harness) -> None:
    key = await _cached_key(server)
    before = await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"a"))
    assert before.key_version == 1
    await server.admin.keys.RotateKey(K.RotateKeyRequest(key_id=key.id))
    after = await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"b"))
    assert after.key_version == 2
    old = await server.admin.keys.Decrypt(
        K.DecryptRequest(key_id=key.id, ciphertext=before.ciphertext)
    )
    assert old.key_version == 1 and not old.used_primary
    got = await server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert got.primary_version == 2 and len(got.versions) == 2


async def test_a_version_expired_by_the_scheduler_no_longer_decrypts(server: Harness) -> None:
    key = await _cached_key(server)  # rotates every 30 days, versions live 90
    old = await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"a"))
    await server.advance(timedelta(days=31))  # rotated by the scheduler
    newer = await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"b"))
    assert newer.key_version == old.key_version + 1
    await server.advance(timedelta(days=60))  # version 1 reached its max lifetime
    refused = await fails(
        server.admin.keys.Decrypt(K.DecryptRequest(key_id=key.id, ciphertext=old.ciphertext))
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "VERSION_EXPIRED"


async def test_a_row_forged_while_the_key_is_cached_is_data_loss_on_the_next_call(
    server: Harness,
) -> None:
    key = await _cached_key(server)
    # The attacker edits the row behind the running server (no event, no commit of its).
    query(server, "UPDATE keys SET exportable = 1 WHERE id = ?", (key.id,))
    forged = await fails(server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x")))
    assert forged.code == grpc.StatusCode.DATA_LOSS
    got = await fails(server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id)))
    assert got.code == grpc.StatusCode.DATA_LOSS


async def test_usage_is_current_on_get_key_after_a_flush(server: Harness) -> None:
    key = await _cached_key(server)
    for _ in range(3):
        await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x"))
    assert server.app is not None and server.app.services is not None
    await server.app.services.keys.flush_usage()
    got = await server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert got.usage_count == 4


@pytest.mark.sqlite_only
async def test_a_key_that_does_not_change_is_read_from_the_store_once(server: Harness) -> None:
    key = await _cached_key(server)
    assert server.app is not None and server.app.services is not None
    cache, store = server.app.services.keys.cache, server.app.store
    # The first encryption reserved a block of the version's nonce budget: a commit.
    await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x"))
    reads, commits = cache.reads, store.status().commits
    for _ in range(5):
        sealed = await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x"))
        await server.admin.keys.Decrypt(
            K.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
        )
        await server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    # Read again only after a commit (a periodic usage flush may land in the loop).
    assert cache.reads - reads <= store.status().commits - commits
    # Any commit (another key's creation) means reading it again.
    await server.admin.keys.GenerateKey(K.GenerateKeyRequest(type="session"))
    reads = cache.reads
    await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x"))
    assert cache.reads == reads + 1


@pytest.mark.postgres
async def test_nothing_is_cached_on_postgresql(server: Harness) -> None:
    key = await _cached_key(server)
    assert server.app is not None and server.app.services is not None
    cache = server.app.services.keys.cache
    reads = cache.reads
    await server.admin.keys.Encrypt(K.EncryptRequest(key_id=key.id, plaintext=b"x"))
    assert cache.reads == reads + 1


async def test_material_is_forgotten_where_the_removal_was_not_made(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker removed the key: this process never ran the removal's own
    ``forget``, so its next fresh read of the key must drop the material it holds."""
    assert server.app is not None and server.app.services is not None
    material = server.app.services.keys._material
    key = await _cached_key(server)
    assert (key.id, 1) in material._loaded
    monkeypatch.setattr(material, "forget", lambda key_id: None)  # as on another worker
    await server.admin.keys.RemoveKey(K.RemoveKeyRequest(key_id=key.id, reason="leaked"))
    assert (key.id, 1) in material._loaded  # what another worker would still hold
    monkeypatch.undo()
    await server.admin.keys.GetKey(K.GetKeyRequest(key_id=key.id))
    assert (key.id, 1) not in material._loaded
