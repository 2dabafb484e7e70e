"""Damaged files, a full disk, and rotating the master key: clear errors, nothing lost,
and an old master key that opens nothing afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import sqlite_utils

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server.crypto.master import MasterKeyError
from keyturn_server.domain import key_material
from keyturn_server.store.sqlite_connections import StoreOpenError
from tests.harness import MASTER_KEY, SECRETS, Harness, fails

pytestmark = pytest.mark.sqlite_only
NEW_MASTER_KEY = "f0" * 32
SECRETS.add(NEW_MASTER_KEY)


async def _keys(server: Harness, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        ids.append(
            (
                await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
            ).key.id
        )
    return ids


@pytest.mark.parametrize("damage", ["truncated", "overwritten pages", "not a database"])
async def test_a_damaged_database_file_is_refused_at_start_with_a_clear_error(
    server: Harness, damage: str
) -> None:
    await _keys(server, 40)
    await server.stop()
    path = server.data_dir / "keyturn.db"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2 + 100]
    elif damage == "overwritten pages":
        rng = random.Random(3)
        for page in range(2, len(data) // 4096):
            offset = page * 4096 + 200
            data[offset : offset + 64] = rng.randbytes(64)
    else:
        data[:16] = b"definitely not!!"
    path.write_bytes(bytes(data))
    with pytest.raises(StoreOpenError) as raised:
        await server.start()
    message = str(raised.value)
    assert "keyturn.db" in message and ("damaged" in message or "cannot be used" in message)


@pytest.mark.parametrize(
    "deleted", ["keyring.wrap.%", "keyring.%"], ids=["wrap", "wrap-and-revision"]
)
async def test_a_deleted_keyring_is_refused_at_start_with_what_to_do_and_nothing_changed(
    server: Harness, deleted: str
) -> None:
    await _keys(server, 2)
    await server.stop()
    path = server.data_dir / "keyturn.db"
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta WHERE name LIKE ?", (deleted,))
    before = path.read_bytes()
    with pytest.raises(MasterKeyError) as raised:
        await server.start()
    message = str(raised.value)
    # Not a race with another first start, nor a config row "altered outside Keyturn".
    assert "keyring is missing" in message and str(path) in message, message
    assert "keyturn backup restore" in message and "nothing was changed" in message
    with sqlite3.connect(path) as db:
        assert db.execute(
            "SELECT count(*) FROM meta WHERE name LIKE 'keyring.wrap.%'"
        ).fetchone() == (0,)
    assert path.read_bytes() == before


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "3m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


async def test_a_full_disk_fails_writes_cleanly_and_loses_nothing_acknowledged(
    small_disk: Path,
    tmp_path: Path,
) -> None:
    from keyturn_server.clock import ManualClock

    server = Harness(small_disk / "data", ManualClock())
    await server.start()
    acknowledged: list[str] = []
    failure = None
    try:
        filler = small_disk / "filler"
        with filler.open("wb") as f:  # leave a little room for the database to grow
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        filler.write_bytes(filler.read_bytes()[: -400 * 1024])
        for _ in range(2000):
            try:
                response = await server.admin.keys.GenerateKey(
                    keys_pb2.GenerateKeyRequest(type="api", metadata={"pad": "x" * 200})
                )
            except grpc.aio.AioRpcError as error:
                failure = error
                break
            acknowledged.append(response.key.id)
        assert failure is not None, "the disk never filled"
        assert failure.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
        assert "full" in (failure.details() or "")
        health = (
            await server.admin.admin.GetHealth(admin_pb2.GetHealthRequest(component="store"))
        ).health
        assert health.status == admin_pb2.SERVING_STATUS_NOT_SERVING
        filler.unlink()  # space again: the next write succeeds and health recovers
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
    finally:
        await server.stop()
    copy = tmp_path / "copy"
    shutil.copytree(small_disk / "data", copy)
    again = Harness(copy, server.clock)
    await again.start()
    try:
        for key_id in acknowledged:
            key = await again.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=key_id))
            assert key.versions[0].version == 1
        verified = await again.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())
        assert verified.valid
    finally:
        await again.stop()


def _generations(data_dir: Path) -> set[int]:
    db = sqlite_utils.Database(data_dir / "keyturn.db")
    blobs = [
        r["material"]
        for r in db.query("SELECT material FROM key_versions WHERE material IS NOT NULL")
    ]
    blobs += [
        r["sealed_token"]
        for r in db.query("SELECT sealed_token FROM handle_secrets WHERE sealed_token IS NOT NULL")
    ]
    blobs += [
        r["sealed_token"]
        for r in db.query("SELECT sealed_token FROM events WHERE sealed_token IS NOT NULL")
    ]
    db.close()
    return {struct.unpack(">I", bytes(b)[1:5])[0] for b in blobs}


async def test_master_key_rotation_reseals_everything_online(server: Harness) -> None:
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    sealed = await server.admin.keys.Encrypt(
        keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"payroll")
    )
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    await server.advance(timedelta(minutes=4))
    await server.advance(timedelta(minutes=1))  # automatic rotation: a sealed successor
    assert _generations(server.data_dir) == {1}

    # Another process rotates while this server keeps serving on its event loop.
    rotation = await start_rotation(server.data_dir)
    served = 0
    while rotation.returncode is None:
        answer = await server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
        )
        assert answer.plaintext == b"payroll"
        served += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rotation.wait(), 0.1)
    _, stderr = await rotation.communicate()
    assert rotation.returncode == 0, stderr
    assert b"no longer opens" in stderr and served > 5
    assert _generations(server.data_dir) == {2}

    # The running server reloaded the keyring and kept serving throughout.
    plain = await server.admin.keys.Decrypt(
        keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
    )
    assert plain.plaintext == b"payroll"
    successor = await server.admin.handles.RotateHandle(
        handles_pb2.RotateHandleRequest(token=issued.token)
    )
    assert successor.handle.generation == 2

    await server.stop()
    with pytest.raises(MasterKeyError, match="not the one this data directory was sealed"):
        await server.start(master_key=MASTER_KEY)

    await server.start(master_key=NEW_MASTER_KEY)
    plain = await server.admin.keys.Decrypt(
        keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
    )
    assert plain.plaintext == b"payroll"
    check = await server.admin.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=successor.token)
    )
    assert check.validation.valid  # token digests survive the rotation
    verified = await server.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())
    assert verified.valid  # and so does the audit chain


async def rotate(data_dir: Path, current: str, following: str) -> None:
    rotation = await start_rotation(data_dir, current, following=following)
    _, stderr = await rotation.communicate()
    assert rotation.returncode == 0, stderr


async def test_a_rotation_is_in_the_audit_log(server: Harness) -> None:
    await _keys(server, 1)

    await rotate(server.data_dir, MASTER_KEY, NEW_MASTER_KEY)

    found = {}
    for action in ("keyring.generation.add", "keyring.rotate"):
        listed = await server.admin.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(action=action)
        )
        [found[action]] = listed.events
    assert found["keyring.rotate"].sequence > found["keyring.generation.add"].sequence
    entry = found["keyring.rotate"]
    assert entry.principal.startswith("local:") and entry.details["generation"] == "2"
    assert entry.details["old_master_key"] != entry.details["new_master_key"]
    verified = await server.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())
    assert verified.valid


async def test_a_server_left_on_a_key_rotated_out_twice_says_so_and_not_tampering(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README lets servers run on after a rotation until a convenient restart. A
    second rotation meanwhile re-seals everything under a generation such a server cannot
    unwrap: before, it answered DATA_LOSS, altered, and counted an integrity failure."""
    monkeypatch.setattr(key_material, "CACHE_SIZE", 0)  # every use opens the material
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    sealed = await server.admin.keys.Encrypt(
        keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"payroll")
    )
    await rotate(server.data_dir, MASTER_KEY, NEW_MASTER_KEY)
    third = "cd" * 32
    await rotate(server.data_dir, NEW_MASTER_KEY, third)
    await asyncio.sleep(2.5)  # the server's refresh reads the keyring's revision
    decrypt = keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)

    refused = await fails(server.admin.keys.Decrypt(decrypt))

    assert refused.code == grpc.StatusCode.UNAVAILABLE
    assert refused.reason == "MASTER_KEY_RETIRED" and "restart" in refused.message
    assert server.app is not None and server.app.services is not None
    assert server.app.services.stats.integrity_failures == 0
    await server.restart(master_key=third)
    assert (await server.admin.keys.Decrypt(decrypt)).plaintext == b"payroll"


async def test_rotating_with_the_wrong_current_key_changes_nothing(server: Harness) -> None:
    await _keys(server, 2)
    await server.stop()
    wrong = await start_rotation(server.data_dir, current="ab" * 32)
    _, stderr = await wrong.communicate()
    assert wrong.returncode == 1 and b"not the one" in stderr
    await server.start()
    assert (await server.admin.keys.ListKeys(keys_pb2.ListKeysRequest())).total_size == 2


async def test_a_data_loss_error_names_no_secret(server: Harness) -> None:
    key_id = (await _keys(server, 1))[0]
    await server.stop()
    db = sqlite_utils.Database(server.data_dir / "keyturn.db")
    db["key_versions"].update((key_id, 1), {"material": b"\x01\x00\x00\x00\x01" + b"\0" * 60})
    db.close()
    await server.start()
    failed = await fails(
        server.admin.keys.Encrypt(keys_pb2.EncryptRequest(key_id=key_id, plaintext=b"x"))
    )
    assert failed.code == grpc.StatusCode.DATA_LOSS
    assert "\\x" not in failed.message and "00000000" not in failed.message


async def start_rotation(
    data_dir: Path,
    current: str = MASTER_KEY,
    under: Sequence[str] = (),
    following: str = NEW_MASTER_KEY,
) -> asyncio.subprocess.Process:
    """`keyturn master-key rotate` from ``current`` to ``following``, running (``under``
    a command that runs it, such as setpriv)."""
    return await asyncio.create_subprocess_exec(
        *under,
        sys.executable,
        "-m",
        "keyturn_server",
        "master-key",
        "rotate",
        "--data-dir",
        str(data_dir),
        env={**os.environ, "MASTER_KEY": current, "NEW_MASTER_KEY": following},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def both_keys_wrap(data_dir: Path) -> None:
    """Until a rotation has the keyring wrapped for both master keys (then it waits 3 s
    for running servers to reload, before it re-seals anything)."""
    for _ in range(300):
        if keyring_wraps(data_dir) == 2:
            return
        await asyncio.sleep(0.05)
    assert keyring_wraps(data_dir) == 2


def keyring_wraps(data_dir: Path) -> int:
    db = sqlite_utils.Database(data_dir / "keyturn.db")
    try:
        return len(list(db.query("SELECT name FROM meta WHERE name LIKE 'keyring.wrap.%'")))
    finally:
        db.close()


async def test_a_rotation_killed_half_way_can_be_run_again_and_loses_nothing(
    server: Harness,
) -> None:
    """The on-call's worst case of a rotation: the command is killed (a lost SSH session,
    an OOM kill) after the new keyring generation is in place and before the old master
    key is retired. Servers go on with either key meanwhile, and running the same command
    again finishes the job."""
    key = (await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))).key
    sealed = await server.admin.keys.Encrypt(
        keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"payroll")
    )
    rotation = await start_rotation(server.data_dir)
    await both_keys_wrap(server.data_dir)
    rotation.kill()
    await rotation.wait()

    # Half-way: a server started with the old key still serves, and so would the new one.
    await server.restart(master_key=MASTER_KEY)
    plain = await server.admin.keys.Decrypt(
        keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
    )
    assert plain.plaintext == b"payroll"
    later = await server.admin.keys.Encrypt(
        keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"sealed half-way")
    )

    again = await start_rotation(server.data_dir)
    _, stderr = await again.communicate()
    assert again.returncode == 0, stderr
    assert keyring_wraps(server.data_dir) == 1
    await server.stop()
    with pytest.raises(MasterKeyError):
        await server.start(master_key=MASTER_KEY)
    await server.start(master_key=NEW_MASTER_KEY)
    for ciphertext, text in (
        (sealed.ciphertext, b"payroll"),
        (later.ciphertext, b"sealed half-way"),
    ):
        answer = await server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key.id, ciphertext=ciphertext)
        )
        assert answer.plaintext == text
    verified = await server.admin.admin.VerifyAuditLog(admin_pb2.VerifyAuditLogRequest())
    assert verified.valid
