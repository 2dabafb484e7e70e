"""Secrets sealed at rest with 192-bit nonces (XAES-256-GCM), so that no count of seals
can wear a sealing key out; seals made before keep opening."""

from __future__ import annotations

import os
import sqlite3
import struct
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from keyturn.v1 import handles_pb2, keys_pb2
from keyturn_server.crypto.seal import Sealer, SealError, binding
from keyturn_server.crypto.xaes import Xaes256Gcm
from tests.harness import MASTER_KEY, Harness
from tests.test_schema_upgrade import clock_after, older_data_dir
from tests.test_tamper import NEW_MASTER_KEY, rotate

pytestmark = pytest.mark.sqlite_only

#: https://c2sp.org/XAES-256-GCM, its two test vectors: (key, nonce, plaintext, aad, sealed).
VECTORS = [
    (
        bytes([1]) * 32,
        b"ABCDEFGHIJKLMNOPQRSTUVWX",
        b"XAES-256-GCM",
        b"",
        "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
    ),
    (
        bytes([3]) * 32,
        b"ABCDEFGHIJKLMNOPQRSTUVWX",
        b"XAES-256-GCM",
        b"c2sp.org/XAES-256-GCM",
        "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
    ),
]


@pytest.mark.parametrize(("key", "nonce", "plaintext", "aad", "sealed"), VECTORS)
def test_xaes_matches_the_c2sp_vectors(
    key: bytes, nonce: bytes, plaintext: bytes, aad: bytes, sealed: str
) -> None:
    aead = Xaes256Gcm(key)
    assert aead.encrypt(nonce, plaintext, aad).hex() == sealed
    assert aead.decrypt(nonce, bytes.fromhex(sealed), aad) == plaintext
    other = bytearray(nonce)
    other[3] ^= 1  # the half that derives the key
    with pytest.raises(InvalidTag):
        aead.decrypt(bytes(other), bytes.fromhex(sealed), aad)


def test_a_sealing_generation_uses_a_key_of_its_own_for_every_seal() -> None:
    """What 192-bit nonces buy: the generation's key never meets GCM itself, so the 2^32
    bound on random 96-bit nonces per key does not apply to it."""
    sealer = Sealer({1: bytes(32)}, 1, wide_from=1)
    blobs = [sealer.seal(b"material", binding("key_versions", "key_a", 1)) for _ in range(50)]
    nonces = {blob[5:29] for blob in blobs}
    assert len(nonces) == 50 and all(blob[0] == 2 for blob in blobs)
    assert {sealer.open(b, binding("key_versions", "key_a", 1)) for b in blobs} == {b"material"}
    with pytest.raises(SealError):
        sealer.open(blobs[0], binding("key_versions", "key_b", 1))


def test_seals_of_the_earlier_format_still_open_and_a_truncated_one_is_refused() -> None:
    keys = {1: os.urandom(32), 2: os.urandom(32)}
    earlier = Sealer(keys, 1).seal(b"token", binding("handle_secrets", "h", 2))
    assert earlier[0] == 1 and len(earlier) == 5 + 12 + 5 + 16
    assert Sealer(keys, 2, wide_from=2).open(earlier, binding("handle_secrets", "h", 2)) == b"token"
    wide = Sealer(keys, 2, wide_from=2).seal(b"token", binding("handle_secrets", "h", 2))
    for cut in (wide[:4], wide[: 5 + 24 + 15]):
        with pytest.raises(SealError, match="truncated"):
            Sealer(keys, 2, wide_from=2).open(cut, binding("handle_secrets", "h", 2))


def sealed_formats(data_dir: Path) -> dict[str, set[tuple[int, int]]]:
    """(format, generation) of every sealed value, by table."""
    found: dict[str, set[tuple[int, int]]] = {}
    with sqlite3.connect(data_dir / "keyturn.db") as db:
        for table, column in (
            ("key_versions", "material"),
            ("handle_secrets", "sealed_token"),
            ("events", "sealed_token"),
        ):
            rows = db.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")
            found[table] = {struct.unpack(">BI", bytes(r[0])[:5]) for r in rows}
    db.close()
    return found


async def seal_one_of_each(server: Harness) -> tuple[str, bytes]:
    """A key version's material and an automatic rotation's sealed successor."""
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    sealed = await server.admin.keys.Encrypt(
        keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"payroll")
    )
    await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    await server.advance(timedelta(minutes=4))
    await server.advance(timedelta(minutes=1))
    return key.id, sealed.ciphertext


async def test_a_new_store_seals_every_secret_with_a_192_bit_nonce(server: Harness) -> None:
    await seal_one_of_each(server)
    found = sealed_formats(server.data_dir)
    assert found["key_versions"] == {(2, 1)}
    assert found["handle_secrets"] == {(2, 1)}


async def test_an_older_store_keeps_its_seals_until_a_master_key_rotation_moves_them(
    tmp_path: Path,
) -> None:
    """An older server may still run on such a store (a replica in a rolling upgrade, a
    rollback), and it opens only 96-bit seals: new ones keep that format until the
    operator's next master key rotation, which re-seals everything with 192-bit nonces."""
    made = older_data_dir(tmp_path / "data")
    server = await Harness(tmp_path / "data", clock_after(made)).start()
    try:
        key_id, ciphertext = await seal_one_of_each(server)
        found = sealed_formats(server.data_dir)
        assert {fmt for values in found.values() for fmt, _ in values} == {1}

        await rotate(server.data_dir, MASTER_KEY, NEW_MASTER_KEY)
        await server.stop()
        await server.start(master_key=NEW_MASTER_KEY)
        assert set().union(*sealed_formats(server.data_dir).values()) == {(2, 2)}
        plain = await server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key_id, ciphertext=ciphertext)
        )
        assert plain.plaintext == b"payroll"
        await seal_one_of_each(server)
        assert set().union(*sealed_formats(server.data_dir).values()) == {(2, 2)}
    finally:
        await server.stop()
