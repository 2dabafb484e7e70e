"""Fill a stopped server's SQLite store with many handles and keys, fast, through the
server's own code: its store (SqliteStore opens the file and runs the real
migrations), its row mapping (SqlRepository.insert_handle / insert_key / insert_secret /
insert_version), its domain records, and its keyring (unlocked with the same master
key, so that the check value matches and sealed key material opens).

Creating a million records through the API would take hours on two cores; one write
transaction per chunk of rows, on a connection with a large page cache and no fsync per
commit, takes a few minutes.

Seeded handles and keys look like API-made ones in every column the server reads.
Only a sample of the handles gets a real token (kept to validate them); the others get
a random 32-byte digest, which is what an HMAC-SHA-256 digest looks like to the index.
No event or audit row is written for them: those tables grow with traffic, not with the
number of stored records.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.fixtures import (
    HANDLE_LENGTH,
    HANDLE_LIFETIME,
    HANDLE_ROTATION,
    HANDLE_TYPE,
    HANDLE_WARNING,
    MAX_USAGE,
)
from keyturn_server.bootstrap import unlock
from keyturn_server.crypto.keyring import Keyring
from keyturn_server.domain import tokens
from keyturn_server.domain.handles import Handle, HandleSchedule, HandleSecret, HandleState
from keyturn_server.domain.ids import new_id
from keyturn_server.domain.key_material import material_binding
from keyturn_server.domain.keys import Key, KeySchedule, KeyState, KeyVersion, VersionState
from keyturn_server.store.integrity import RowIntegrity
from keyturn_server.store.sql import SqlRepository
from keyturn_server.store.sqlite import SqliteStore
from keyturn_server.store.sqlite_connections import connect as connect_like_the_server

CHUNK = 25_000
OWNERS = 1000
KEY_SCHEDULE = KeySchedule(timedelta(days=30), timedelta(days=7), timedelta(days=90))
HANDLE_SCHEDULE = HandleSchedule(HANDLE_ROTATION, HANDLE_WARNING, HANDLE_LIFETIME, HANDLE_WARNING)


@dataclass(frozen=True)
class Seeded:
    handles: int
    keys: int
    #: Tokens of handles spread evenly over the seeded ones, for ValidateHandle.
    tokens: list[str]
    #: Ids of keys spread evenly over the seeded ones, for GetKey.
    key_ids: list[str]
    seconds: float
    db_bytes: int


def _owner(i: int) -> str:
    # Spread over many principals, as real traffic is: max_concurrent_handles is per
    # owner, and GenerateHandle counts the caller's own active handles.
    return f"seed-{i % OWNERS:04d}"


def _handle(i: int, now: datetime, rng: random.Random) -> Handle:
    created = now - timedelta(seconds=rng.uniform(0, 10 * 86400))
    # Every deadline at least a day ahead: the scheduler has nothing due while idle.
    rotate = now + timedelta(seconds=rng.uniform(2 * 86400, 30 * 86400))
    warn = rotate - HANDLE_WARNING
    return Handle(
        id=new_id("hdl"),
        type=HANDLE_TYPE,
        algorithm="sha256",
        state=HandleState.ACTIVE,
        owner=_owner(i),
        created_for="",
        context={},
        usage_count=0,
        max_usage=MAX_USAGE,
        create_time=created,
        rotate_time=rotate,
        expire_time=created + HANDLE_LIFETIME,
        warn_time=warn,
        schedule=HANDLE_SCHEDULE,
        notify_time=warn,
    )


def _key(i: int, now: datetime, rng: random.Random) -> Key:
    created = now - timedelta(seconds=rng.uniform(0, 10 * 86400))
    rotation = now + timedelta(seconds=rng.uniform(8 * 86400, 30 * 86400))
    expiry = created + KEY_SCHEDULE.max_lifetime
    warn = min(rotation, expiry) - KEY_SCHEDULE.warning_threshold
    key_id = new_id("key")
    version = KeyVersion(key_id, 1, VersionState.ENABLED, created, expiry)
    return Key(
        id=key_id,
        type="encryption",
        algorithm="aes-256-gcm",
        key_length=32,
        state=KeyState.ACTIVE,
        primary_version=1,
        owner=_owner(i),
        created_for="",
        metadata={},
        create_time=created,
        schedule=KEY_SCHEDULE,
        exportable=False,
        next_rotation_time=rotation,
        expire_time=expiry,
        warn_time=warn,
        notify_time=warn,
        versions=(version,),
    )


class _Sampler:
    """Picks ``size`` indexes spread evenly over ``count``."""

    def __init__(self, count: int, size: int) -> None:
        self.every = max(1, count // max(1, size))
        self.size = size

    def picks(self, i: int, taken: int) -> bool:
        return i % self.every == 0 and taken < self.size


def _seed_handles(
    repo: SqlRepository,
    keyring: Keyring,
    start: int,
    stop: int,
    now: datetime,
    sampler: _Sampler,
    sample: list[str],
) -> None:
    rng = random.Random(start)
    for i in range(start, stop):
        handle = _handle(i, now, rng)
        if sampler.picks(i, len(sample)):
            token = tokens.new_token(HANDLE_TYPE, HANDLE_LENGTH)
            digest = keyring.digest(token, "sha256")
            sample.append(token)
        else:
            digest = os.urandom(32)
        repo.insert_handle(handle)
        repo.insert_secret(HandleSecret(digest, handle.id, 1, handle.create_time))


def _seed_keys(
    repo: SqlRepository,
    keyring: Keyring,
    start: int,
    stop: int,
    now: datetime,
    sampler: _Sampler,
    sample: list[str],
) -> None:
    rng = random.Random(-start - 1)
    for i in range(start, stop):
        key = _key(i, now, rng)
        repo.insert_key(key)
        sealed = keyring.sealer.seal(os.urandom(32), material_binding(key.id, 1))
        repo.insert_version(key.versions[0], sealed)
        if sampler.picks(i, len(sample)):
            sample.append(key.id)


async def _unlock(data_dir: Path, master_key: str) -> Keyring:
    """Open the store as the server does (migrations, WAL) and derive the keyring,
    refusing a master key other than the one the data directory was sealed with."""
    store = SqliteStore(data_dir / "keyturn.db")
    try:
        keyring, _ = await unlock(store, data_dir, master_key, production=False)
    finally:
        await store.close()
    return keyring


def _connect(db: Path) -> sqlite3.Connection:
    """A connection like the server's, tuned for bulk loading: a large page cache, and
    no fsync per commit (the file is checkpointed once at the end)."""
    conn = connect_like_the_server(db)
    conn.execute("PRAGMA cache_size = -262144")
    conn.execute("PRAGMA synchronous = OFF")
    return conn


def seed(
    data_dir: Path, master_key: str, count: int, sample: int = 1000, progress: bool = True
) -> Seeded:
    """Add ``count`` handles and ``count`` keys to the store in ``data_dir``. The server
    must be stopped (its first start created the store and the master check value)."""
    started = time.perf_counter()
    keyring = asyncio.run(_unlock(data_dir, master_key))
    db = data_dir / "keyturn.db"
    conn = _connect(db)
    repo = SqlRepository(conn, integrity=RowIntegrity(keyring.protection))
    now = datetime.now(UTC)
    sampler = _Sampler(count, sample)
    handle_tokens: list[str] = []
    key_ids: list[str] = []
    try:
        for start in range(0, count, CHUNK):
            stop = min(count, start + CHUNK)
            conn.execute("BEGIN IMMEDIATE")
            _seed_handles(repo, keyring, start, stop, now, sampler, handle_tokens)
            _seed_keys(repo, keyring, start, stop, now, sampler, key_ids)
            conn.execute("COMMIT")
            if progress and count >= 10 * CHUNK and (stop // CHUNK) % 8 == 0:
                rate = stop / (time.perf_counter() - started)
                print(f"  seeded {stop:,} of {count:,} handles and keys ({rate:,.0f} each/s)")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return Seeded(
        handles=count,
        keys=count,
        tokens=handle_tokens,
        key_ids=key_ids,
        seconds=time.perf_counter() - started,
        db_bytes=sum(p.stat().st_size for p in data_dir.glob("keyturn.db*")),
    )
