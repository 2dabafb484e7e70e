"""Every KeyService RPC through the typed client."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keyturn import AsyncClient
from keyturn.v1 import resources_pb2


async def test_generate_get_and_list_return_the_generated_messages(client: AsyncClient) -> None:
    created = await client.generate_key(
        "encryption", metadata={"purpose": "data-encryption"}, user_id="user123"
    )
    key = created.key
    assert isinstance(key, resources_pb2.Key)
    assert key.type == "encryption" and key.primary_version == 1
    assert key.metadata == {"purpose": "data-encryption"} and key.created_for == "user123"
    assert created.material == b""

    assert await client.get_key(key.id) == key
    listed = await client.list_keys(type="encryption", status="active")
    assert [k.id for k in listed.keys] == [key.id] and listed.total_size == 1


async def test_rotate_remove_and_restore_walk_the_key_lifecycle(client: AsyncClient) -> None:
    key = (await client.generate_key("encryption")).key

    rotated = await client.rotate_key(key.id, reason="scheduled drill", user_id="ops")
    assert rotated.primary_version == 2 and len(rotated.versions) == 2

    removed = await client.remove_key(key.id, reason="decommissioned")
    assert removed.status == resources_pb2.KEY_STATUS_REMOVED
    assert removed.HasField("destroy_time")

    restored = await client.restore_key(key.id, reason="still needed")
    assert restored.status == resources_pb2.KEY_STATUS_ACTIVE


async def test_encrypt_then_decrypt_after_a_rotation(client: AsyncClient) -> None:
    key = (await client.generate_key("encryption")).key
    sealed = await client.encrypt(key.id, b"card 4111", associated_data=b"order-7")
    await client.rotate_key(key.id)

    opened = await client.decrypt(key.id, sealed.ciphertext, associated_data=b"order-7")
    assert opened.plaintext == b"card 4111"
    assert opened.key_version == 1 and not opened.used_primary


async def test_sign_verifies_with_the_service_and_with_the_public_key(
    client: AsyncClient,
) -> None:
    key = (await client.generate_key("signing")).key
    signed = await client.sign(key.id, b"release 1.2.3")
    assert (await client.verify(key.id, b"release 1.2.3", signed.signature)).valid
    assert not (await client.verify(key.id, b"release 1.2.4", signed.signature)).valid

    public = await client.get_public_key(key.id)
    loaded = serialization.load_pem_public_key(public.pem.encode())
    assert isinstance(loaded, rsa.RSAPublicKey)
    loaded.verify(
        signed.raw_signature,
        b"release 1.2.3",
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
        hashes.SHA256(),
    )


async def test_mac_round_trip_and_export_of_an_exportable_key(client: AsyncClient) -> None:
    created = await client.generate_key("session", reveal=True)
    key = created.key
    assert len(created.material) == 64

    mac = await client.compute_mac(key.id, b"session=42")
    assert (await client.verify_mac(key.id, b"session=42", mac.mac)).valid
    assert not (await client.verify_mac(key.id, b"session=43", mac.mac)).valid

    exported = await client.export_key(key.id, reason="migration")
    assert exported.material == created.material and exported.key_version == 1


async def test_statistics_count_what_the_client_did(client: AsyncClient) -> None:
    for _ in range(3):
        await client.generate_key("api")
    statistics = (await client.get_key_statistics()).statistics
    assert statistics.total == 3
    assert statistics.by_type["api"].total == 3


async def test_a_status_filter_accepts_names_and_numbers(client: AsyncClient) -> None:
    await client.generate_key("api")
    by_name = await client.list_keys(status="KEY_STATUS_ACTIVE")
    by_number = await client.list_keys(status=resources_pb2.KEY_STATUS_ACTIVE)
    assert by_name == by_number and by_name.total_size == 1
    with pytest.raises(ValueError, match="ACTIVE"):
        await client.list_keys(status="sleeping")
