"""Secrets at rest: sealed under the master key, bound to their rows, in private files."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import stat
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import sqlite_utils

from keyturn.v1 import keys_pb2, resources_pb2
from keyturn_server.app import App
from keyturn_server.clock import ManualClock
from keyturn_server.crypto.master import MasterKeyError, parse_master_key
from keyturn_server.settings import Settings
from tests.harness import MASTER_KEY, SECRETS, Harness, fails

pytestmark = pytest.mark.sqlite_only

OTHER_KEY = "00" * 32
#: A passphrase of words whose letters, with the spaces skipped, are 43 base64 characters:
#: about one such passphrase in 35 is.
WORDS = "horse battery orange horse piano cloud river cloud"
#: The 32 bytes those letters decode to, which earlier releases took WORDS for.
WORDS_UNSTRETCHED = base64.b64decode("horsebatteryorangehorsepianocloudrivercloud=").hex()
SECRETS.update((WORDS, WORDS_UNSTRETCHED))
RAW = bytes(range(32))


def database(server: Harness) -> sqlite_utils.Database:
    return sqlite_utils.Database(server.data_dir / "keyturn.db")


def stored_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in data_dir.glob("keyturn.db*"))


async def test_no_key_material_appears_in_the_database_files(server: Harness) -> None:
    revealed = []
    for type_name in ("session", "api"):
        response = await server.admin.keys.GenerateKey(
            keys_pb2.GenerateKeyRequest(type=type_name, reveal=True)
        )
        revealed.append(response.material)
    await server.stop()
    contents = stored_bytes(server.data_dir)
    for material in revealed:
        assert len(material) >= 64
        assert material not in contents
        assert material.hex().encode() not in contents
        assert material[:16] not in contents


def copies(server: Harness, value: bytes) -> int:
    """How many times ``value`` is in the database's files (the database, its WAL)."""
    return stored_bytes(server.data_dir).count(value)


async def destroy_by_removal(server: Harness, key_id: str) -> None:
    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=key_id))
    await server.advance(timedelta(days=1, seconds=1))


async def destroy_by_age(server: Harness, key_id: str) -> None:
    await server.advance(timedelta(days=90, seconds=1))  # version 1's max lifetime


@pytest.mark.parametrize("destroy", [destroy_by_removal, destroy_by_age], ids=["removed", "aged"])
async def test_destroyed_material_is_gone_from_the_database_files_of_the_running_server(
    server: Harness, destroy: Callable[[Harness, str], Awaitable[None]]
) -> None:
    """A copy of the data directory taken after the destruction, with MASTER_KEY, must not
    open what Keyturn said was destroyed. Before, the write-ahead log held the destroyed
    version's sealed material (13 copies) until later writes happened to overwrite it."""
    ids = [
        (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key.id
        for _ in range(20)
    ]
    victim = ids[7]
    for key_id in ids:  # pages written again and again: their older images pile up in the WAL
        await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key_id, plaintext=b"x"))
    sealed = await server.sealed_material(victim, 1)
    assert sealed is not None and copies(server, sealed) > 0

    await destroy(server, victim)
    gone = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=victim))
    assert gone.versions[0].state != resources_pb2.KEY_VERSION_STATE_ENABLED
    assert await server.sealed_material(victim, 1) is None
    for _ in range(50):  # the WAL is truncated just after the commit, by another thread
        if copies(server, sealed[-16:]) == 0:
            break
        await asyncio.sleep(0.1)
    assert copies(server, sealed) == 0
    assert copies(server, sealed[-16:]) == 0  # not even its tag


async def test_the_wrong_master_key_is_refused_at_start(server: Harness) -> None:
    await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
    await server.stop()
    with pytest.raises(MasterKeyError, match="not the one this data directory was sealed with"):
        await server.start(master_key=OTHER_KEY)
    await server.start(master_key=MASTER_KEY)  # the right one still opens everything


@pytest.mark.parametrize("how", ["flipped byte", "swapped with another key's row"])
async def test_a_tampered_row_is_data_loss_for_that_key_only(server: Harness, how: str) -> None:
    victim = (
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
    ).key.id
    other = (
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
    ).key.id
    await server.stop()
    db = database(server)
    table = db["key_versions"]
    victim_blob = table.get((victim, 1))["material"]
    if how == "flipped byte":
        tampered = victim_blob[:-1] + bytes([victim_blob[-1] ^ 1])
    else:
        tampered = table.get((other, 1))["material"]
    table.update((victim, 1), {"material": tampered})
    db.close()
    await server.start()

    failed = await fails(
        server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=victim, plaintext=b"x"))
    )
    assert failed.code == grpc.StatusCode.DATA_LOSS
    assert failed.reason == "MATERIAL_TAMPERED"
    still = await server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=other, plaintext=b"x"))
    assert still.key_version == 1


async def test_data_files_are_private_to_the_server_user(server: Harness) -> None:
    await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
    for name in ("keyturn.db", "keyturn.db-wal", "keyturn.db-shm", "admin.token"):
        mode = stat.S_IMODE((server.data_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


async def test_development_mode_creates_a_private_master_key_and_warns(
    tmp_path: Path, logs_hold_no_secrets: io.StringIO
) -> None:
    harness = Harness(tmp_path / "dev", ManualClock())
    harness.settings = dataclasses.replace(harness.settings, master_key=None)
    await harness.start()
    try:
        key_file = tmp_path / "dev" / "master.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        SECRETS.add(key_file.read_text().strip())
        assert "DEVELOPMENT MODE" in logs_hold_no_secrets.getvalue()
        await harness.restart()  # the same file opens the same data again
    finally:
        await harness.stop()


async def test_production_refuses_to_start_without_a_master_key(tmp_path: Path) -> None:
    app = App(Settings(listen=("127.0.0.1:0",), data_dir=tmp_path / "prod", production=True))
    with pytest.raises(MasterKeyError, match="MASTER_KEY is required in production"):
        await app.start()
    await app.stop()
    assert not (tmp_path / "prod" / "master.key").exists()


async def test_a_passphrase_is_stretched_with_a_stored_salt(tmp_path: Path) -> None:
    passphrase = "correct horse battery staple, twice over"
    SECRETS.add(passphrase)
    harness = Harness(
        tmp_path / "pass",
        ManualClock(),
    )
    await harness.start(master_key=passphrase)
    try:
        key = await harness.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
        await harness.restart()
        fetched = await harness.admin.keys.ComputeMac(
            keys_pb2.ComputeMacRequest(key_id=key.key.id, data=b"d")
        )
        assert fetched.key_version == 1
        await harness.stop()
        with pytest.raises(MasterKeyError):
            await harness.start(master_key=passphrase + "!")
    finally:
        await harness.stop()


async def test_a_short_passphrase_is_refused(tmp_path: Path) -> None:
    harness = Harness(tmp_path / "short", ManualClock())
    with pytest.raises(MasterKeyError, match="at least 16 characters"):
        await harness.start(master_key="hunter2")


@pytest.mark.parametrize(
    ("value", "raw"),
    [
        (RAW.hex(), RAW),
        (RAW.hex().upper(), RAW),
        (base64.b64encode(RAW).decode(), RAW),
        (base64.b64encode(RAW).decode().rstrip("="), RAW),
        (base64.urlsafe_b64encode(b"\xff" * 32).decode(), b"\xff" * 32),
        (WORDS, None),
        ("horse-battery-orange-horse-piano-cloud-river", None),
        ("a" * 43, None),  # its last character sets bits past the 32 bytes
        (" ".join([RAW.hex()[:20], RAW.hex()[20:40], RAW.hex()[40:62]]), None),  # 31 bytes
    ],
    ids=[
        "hex",
        "HEX",
        "base64",
        "base64-unpadded",
        "base64url",
        "words",
        "dashed words",
        "non-canonical",
        "hex with a space",
    ],
)
def test_master_key_is_raw_bytes_only_in_hex_or_canonical_base64(
    value: str, raw: bytes | None
) -> None:
    salt = b"s" * 16
    parsed = parse_master_key(value, salt)
    if raw is None:
        assert parsed.source == "MASTER_KEY (passphrase)"
    else:
        assert parsed.raw == raw


async def test_a_passphrase_of_words_is_stretched_even_when_its_letters_read_as_base64(
    tmp_path: Path,
) -> None:
    """Before, base64 skipped the spaces and WORDS became the master key as it was: an
    attacker with the database tried passphrases at HKDF speed, not scrypt's."""
    harness = Harness(tmp_path / "words", ManualClock())
    await harness.start(master_key=WORDS)
    try:
        await harness.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
        await harness.stop()
        assert database(harness)["meta"].get("master_salt")  # stretched with a stored salt
        with pytest.raises(MasterKeyError, match="not the one"):
            await harness.start(master_key=WORDS_UNSTRETCHED)
        await harness.start(master_key=WORDS)
    finally:
        await harness.stop()


async def test_a_data_directory_wrapped_under_an_unstretched_passphrase_opens_and_says_to_rotate(
    tmp_path: Path, logs_hold_no_secrets: io.StringIO
) -> None:
    harness = Harness(tmp_path / "legacy", ManualClock())
    await harness.start(master_key=WORDS_UNSTRETCHED)  # what an earlier release made of WORDS
    try:
        key = await harness.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
        await harness.restart(master_key=WORDS)

        mac = await harness.admin.keys.ComputeMac(
            keys_pb2.ComputeMacRequest(key_id=key.key.id, data=b"d")
        )
        assert mac.key_version == 1
        said = logs_hold_no_secrets.getvalue()
        assert "read as a raw key without stretching it" in said
        assert "keyturn master-key rotate" in said
    finally:
        await harness.stop()
