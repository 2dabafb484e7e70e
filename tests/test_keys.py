"""KeyService end to end, over real channels to a real server."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keyturn.v1 import keys_pb2, resources_pb2
from tests.harness import Harness, fails

ACTIVE = resources_pb2.KEY_STATUS_ACTIVE
DAY = timedelta(days=1)


async def generate(server: Harness, type_name: str, **kwargs: object) -> resources_pb2.Key:
    response = await server.admin.keys.GenerateKey(
        keys_pb2.GenerateKeyRequest(type=type_name, user_id="user123", **kwargs)  # type: ignore[arg-type]
    )
    return response.key


@pytest.mark.parametrize(
    ("type_name", "algorithm", "rotation", "lifetime"),
    [
        ("encryption", "aes-256-gcm", 30 * DAY, 90 * DAY),
        ("signing", "rsa", 60 * DAY, 365 * DAY),
        ("session", "sha256", timedelta(hours=24), 7 * DAY),
        ("api", "sha512", 7 * DAY, 30 * DAY),
    ],
    ids=["encryption", "signing", "session", "api"],
)
async def test_each_builtin_type_generates_with_the_specified_schedule(
    server: Harness, type_name: str, algorithm: str, rotation: timedelta, lifetime: timedelta
) -> None:
    key = await generate(server, type_name, metadata={"purpose": "data-encryption"})
    created = key.create_time.ToDatetime()
    assert key.id.startswith("key_")
    assert key.type == type_name and key.algorithm == algorithm
    assert key.status == ACTIVE and key.primary_version == 1
    assert [v.version for v in key.versions] == [1]
    assert key.next_rotation_time.ToDatetime() - created == rotation
    assert key.expire_time.ToDatetime() - created == lifetime
    assert key.metadata == {"purpose": "data-encryption"}
    assert key.owner == "admin" and key.created_for == "user123"

    fetched = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    assert fetched == key


async def test_encrypt_decrypt_round_trip_with_associated_data(server: Harness) -> None:
    key = await generate(server, "encryption")
    encrypted = await server.admin.keys.Encrypt(
        keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"card 4111", associated_data=b"order-7")
    )
    assert encrypted.key_version == 1
    assert b"card 4111" not in encrypted.ciphertext

    decrypted = await server.admin.keys.Decrypt(
        keys_pb2.DecryptRequest(
            key_id=key.id, ciphertext=encrypted.ciphertext, associated_data=b"order-7"
        )
    )
    assert decrypted.plaintext == b"card 4111"
    assert decrypted.used_primary

    wrong_aad = await fails(
        server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(
                key_id=key.id, ciphertext=encrypted.ciphertext, associated_data=b"order-8"
            )
        )
    )
    assert wrong_aad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert wrong_aad.reason == "DECRYPTION_FAILED"


async def test_a_ciphertext_of_one_key_does_not_decrypt_under_another(server: Harness) -> None:
    first, second = await generate(server, "encryption"), await generate(server, "encryption")
    encrypted = await server.admin.keys.Encrypt(
        keys_pb2.EncryptRequest(key_id=first.id, plaintext=b"secret")
    )
    refused = await fails(
        server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=second.id, ciphertext=encrypted.ciphertext)
        )
    )
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_rotation_keeps_old_ciphertexts_decryptable_and_reports_the_version(
    server: Harness,
) -> None:
    key = await generate(server, "encryption")
    old = await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"v1"))

    rotated = await server.admin.keys.RotateKey(
        keys_pb2.RotateKeyRequest(key_id=key.id, user_id="ops", reason="quarterly")
    )
    assert rotated.primary_version == 2
    assert [(v.version, v.primary) for v in rotated.versions] == [(1, False), (2, True)]

    new = await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"v2"))
    assert new.key_version == 2
    old_plain = await server.admin.keys.Decrypt(
        keys_pb2.DecryptRequest(key_id=key.id, ciphertext=old.ciphertext)
    )
    assert (old_plain.plaintext, old_plain.key_version, old_plain.used_primary) == (b"v1", 1, False)
    new_plain = await server.admin.keys.Decrypt(
        keys_pb2.DecryptRequest(key_id=key.id, ciphertext=new.ciphertext)
    )
    assert (new_plain.plaintext, new_plain.key_version, new_plain.used_primary) == (b"v2", 2, True)


async def test_signatures_verify_after_rotation_and_with_the_public_key(server: Harness) -> None:
    key = await generate(server, "signing")
    signed = await server.admin.keys.Sign(keys_pb2.SignRequest(key_id=key.id, data=b"release"))
    assert signed.algorithm == "rsa-pss-2048-sha256"
    await server.admin.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key.id))

    verified = await server.admin.keys.Verify(
        keys_pb2.VerifyRequest(key_id=key.id, data=b"release", signature=signed.signature)
    )
    assert verified.valid and verified.key_version == 1
    tampered = await server.admin.keys.Verify(
        keys_pb2.VerifyRequest(key_id=key.id, data=b"release!", signature=signed.signature)
    )
    assert not tampered.valid

    public = await server.admin.keys.GetPublicKey(
        keys_pb2.GetPublicKeyRequest(key_id=key.id, version=1)
    )
    loaded = serialization.load_pem_public_key(public.pem.encode())
    assert isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size == 2048
    loaded.verify(
        signed.raw_signature,
        b"release",
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    primary = await server.admin.keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=key.id))
    assert primary.key_version == 2 and primary.pem != public.pem


async def test_the_public_key_of_an_expired_version_names_the_scheme_its_signatures_used(
    server: Harness,
) -> None:
    """A verifier picks the padding from the algorithm: an expired version's public key
    still verifies the signatures it made, with the scheme Sign named. Before, the name
    came from the private key, and without it the answer said "rsa"."""
    key = await generate(server, "signing")
    signed = await server.admin.keys.Sign(keys_pb2.SignRequest(key_id=key.id, data=b"release"))
    await server.admin.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key.id))
    await server.advance(365 * DAY + timedelta(seconds=1))  # version 1's max lifetime

    public = await server.admin.keys.GetPublicKey(
        keys_pb2.GetPublicKeyRequest(key_id=key.id, version=1)
    )
    fetched = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    assert fetched.versions[0].state == resources_pb2.KEY_VERSION_STATE_EXPIRED
    assert public.algorithm == signed.algorithm == "rsa-pss-2048-sha256"


@pytest.mark.parametrize("type_name", ["session", "api"])
async def test_macs_verify_across_rotation(server: Harness, type_name: str) -> None:
    key = await generate(server, type_name)
    mac = await server.admin.keys.ComputeMac(keys_pb2.ComputeMacRequest(key_id=key.id, data=b"m"))
    await server.admin.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key.id))
    good = await server.admin.keys.VerifyMac(
        keys_pb2.VerifyMacRequest(key_id=key.id, data=b"m", mac=mac.mac)
    )
    bad = await server.admin.keys.VerifyMac(
        keys_pb2.VerifyMacRequest(key_id=key.id, data=b"n", mac=mac.mac)
    )
    assert good.valid and good.key_version == 1
    assert not bad.valid


async def test_exportable_keys_reveal_material_that_matches_their_macs(server: Harness) -> None:
    import hashlib
    import hmac

    response = await server.admin.keys.GenerateKey(
        keys_pb2.GenerateKeyRequest(type="api", reveal=True)
    )
    assert len(response.material) == 128
    mac = await server.admin.keys.ComputeMac(
        keys_pb2.ComputeMacRequest(key_id=response.key.id, data=b"payload")
    )
    expected = hmac.new(response.material, b"payload", hashlib.sha512).digest()
    assert mac.mac[5:] == expected

    exported = await server.admin.keys.ExportKey(
        keys_pb2.ExportKeyRequest(key_id=response.key.id, reason="handover")
    )
    assert exported.material == response.material and exported.key_version == 1


async def test_encryption_keys_are_not_exportable(server: Harness) -> None:
    refused = await fails(
        server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption", reveal=True))
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.reason == "KEY_NOT_EXPORTABLE"


async def test_removed_keys_are_unusable_until_restored_and_destroyed_after_the_delay(
    server: Harness,
) -> None:
    key = await generate(server, "encryption")
    sealed = await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"x"))

    removed = await server.admin.keys.RemoveKey(
        keys_pb2.RemoveKeyRequest(key_id=key.id, user_id="ops", reason="compromised?")
    )
    assert removed.status == resources_pb2.KEY_STATUS_REMOVED
    assert removed.destroy_time.ToDatetime() - server.clock.now().replace(tzinfo=None) == DAY
    refused = await fails(
        server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
        )
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION

    restored = await server.admin.keys.RestoreKey(
        keys_pb2.RestoreKeyRequest(key_id=key.id, reason="false alarm")
    )
    assert restored.status == ACTIVE
    plain = await server.admin.keys.Decrypt(
        keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
    )
    assert plain.plaintext == b"x"

    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=key.id))
    await server.advance(DAY - timedelta(seconds=1))
    still = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    assert still.status == resources_pb2.KEY_STATUS_REMOVED
    await server.advance(timedelta(seconds=1))
    gone = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    assert gone.status == resources_pb2.KEY_STATUS_DESTROYED
    assert all(v.state == resources_pb2.KEY_VERSION_STATE_DESTROYED for v in gone.versions)
    too_late = await fails(server.admin.keys.RestoreKey(keys_pb2.RestoreKeyRequest(key_id=key.id)))
    assert too_late.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_key_past_its_destroy_time_is_destroyed_even_before_the_scheduler_acts(
    server: Harness,
) -> None:
    """The scheduler may be behind (a stop, no leader), but the pending period the
    remover was promised is over: before, RestoreKey brought such a key back whole."""
    key = await generate(server, "encryption")
    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=key.id))
    assert server.app is not None
    await server.app.services.scheduler.stop()  # nobody destroys it
    server.clock.advance(DAY + timedelta(hours=1))

    seen = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    listed = await server.admin.keys.ListKeys(
        keys_pb2.ListKeysRequest(status=resources_pb2.KEY_STATUS_DESTROYED)
    )
    too_late = await fails(server.admin.keys.RestoreKey(keys_pb2.RestoreKeyRequest(key_id=key.id)))

    assert seen.status == resources_pb2.KEY_STATUS_DESTROYED
    assert [k.id for k in listed.keys] == [key.id]
    assert too_late.code == grpc.StatusCode.FAILED_PRECONDITION
    assert too_late.reason == "KEY_DESTROYED"


async def test_list_keys_filters_pages_and_counts(server: Harness) -> None:
    for _ in range(5):
        await generate(server, "encryption")
    for _ in range(3):
        await generate(server, "session")
    removed = await generate(server, "session")
    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=removed.id))

    seen: list[str] = []
    token = ""
    while True:
        page = await server.admin.keys.ListKeys(
            keys_pb2.ListKeysRequest(type="encryption", page_size=2, page_token=token)
        )
        assert page.total_size == 5
        seen += [k.id for k in page.keys]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 5

    active_sessions = await server.admin.keys.ListKeys(
        keys_pb2.ListKeysRequest(type="session", status=ACTIVE)
    )
    assert active_sessions.total_size == 3
    removed_page = await server.admin.keys.ListKeys(
        keys_pb2.ListKeysRequest(status=resources_pb2.KEY_STATUS_REMOVED)
    )
    assert [k.id for k in removed_page.keys] == [removed.id]


async def test_keys_enter_expiring_inside_the_warning_window(server: Harness) -> None:
    key = await generate(server, "session")  # rotates every 24 h, warns 2 h ahead
    await server.advance(timedelta(hours=21, minutes=59))
    assert (await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))).status == ACTIVE
    server.clock.advance(timedelta(minutes=1))
    expiring = await server.admin.keys.ListKeys(
        keys_pb2.ListKeysRequest(status=resources_pb2.KEY_STATUS_EXPIRING)
    )
    assert [k.id for k in expiring.keys] == [key.id]


async def test_statistics_count_keys_by_type_and_status_and_operations(server: Harness) -> None:
    key = await generate(server, "encryption")
    await generate(server, "signing")
    await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"a"))
    await server.admin.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key.id))
    stats = (
        await server.admin.keys.GetKeyStatistics(keys_pb2.GetKeyStatisticsRequest())
    ).statistics
    assert stats.total == 2
    assert stats.by_status["ACTIVE"] == 2
    assert stats.by_type["encryption"].total == 1
    assert stats.by_type["encryption"].versions == 2
    assert stats.operations["encrypt"] == 1
    assert stats.rotations.last_hour == 1
    assert stats.generated.last_day == 2
    assert stats.generate_latency.count == 2


async def test_usage_counts_reach_the_key_record(server: Harness) -> None:
    key = await generate(server, "session")
    for _ in range(3):
        await server.admin.keys.ComputeMac(keys_pb2.ComputeMacRequest(key_id=key.id, data=b"d"))
    fetched = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    assert fetched.usage_count == 3
    assert fetched.HasField("last_used_time")
    assert server.app is not None and server.app.services is not None
    await server.app.services.keys.flush_usage()
    await server.restart()
    again = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key.id))
    assert again.usage_count == 3


async def test_a_removed_signing_key_serves_no_public_key_until_it_is_restored(
    server: Harness,
) -> None:
    """RemoveKey stops the whole key, its public key too (Cloud KMS: a version scheduled
    for destruction has none): relying parties that fetch public keys must not go on
    trusting a key removed as compromised. Before, GetPublicKey served it while removed
    and after destruction, though Verify was refused."""
    key = await generate(server, "signing")
    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=key.id, reason="leak"))
    for version in (0, 1):
        refused = await fails(
            server.admin.keys.GetPublicKey(
                keys_pb2.GetPublicKeyRequest(key_id=key.id, version=version)
            )
        )
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.reason == "KEY_REMOVED"
    await server.admin.keys.RestoreKey(keys_pb2.RestoreKeyRequest(key_id=key.id))
    await server.admin.keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=key.id))

    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=key.id))
    await server.advance(DAY)
    refused = await fails(
        server.admin.keys.GetPublicKey(keys_pb2.GetPublicKeyRequest(key_id=key.id, version=1))
    )
    assert refused.reason == "KEY_DESTROYED"
