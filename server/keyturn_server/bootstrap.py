"""Opening a data directory: its store (:func:`open_store`), the master key and the keyring
it wraps, or both created on first start, then the store's rows protected with keys from
the keyring; and what else a first start makes (:func:`prepare`). Shared by `keyturn
serve` and the operator commands."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from keyturn_server.clock import Clock, SystemClock
from keyturn_server.crypto.integrity import ROW_MACS
from keyturn_server.crypto.keyring import REVISION, WRAP_PREFIX, Keyring, KeyringData, fingerprint
from keyturn_server.crypto.master import (
    MasterKey,
    MasterKeyError,
    legacy_master_key,
    load_or_create_dev_key,
    needs_salt,
    new_salt,
    parse_master_key,
)
from keyturn_server.domain.access import SYSTEM
from keyturn_server.domain.access_token_service import AccessTokenService
from keyturn_server.domain.audit import AuditChain, AuditDraft, AuditLog
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.journal import Journal
from keyturn_server.domain.repositories import Repository, Store
from keyturn_server.observability import logs
from keyturn_server.settings import Settings
from keyturn_server.store.files import DB_FILE
from keyturn_server.store.sqlite import SqliteStore

log = logging.getLogger("keyturn.security")

DEV_KEY_FILE = "master.key"
#: Rows given their MACs in one unit of work on the first start after row MACs (about a
#: third of a second of work: a restart loses at most that).
PROTECT_UNIT = 2000
#: Seconds between the lines that say how far that has got.
PROTECT_SAY_EVERY = 10.0
#: Seconds a replica waits while another gives a unit of rows their MACs.
PROTECT_TURN = 0.05


def master_key_from(
    store: Store, data_dir: Path, master_key: str | None, production: bool
) -> tuple[MasterKey, bytes | None]:
    """The master key to use, and a new scrypt salt to store when one was made."""
    reader = store.read()
    salt = reader.get_meta("master_salt")
    if master_key:
        fresh = new_salt() if needs_salt(master_key) and salt is None else None
        return parse_master_key(master_key, salt or fresh), fresh
    if production:
        raise MasterKeyError(
            "MASTER_KEY is required in production (--production or KEYTURN_ENV=production): "
            "32 random bytes as hex or base64, or a long passphrase"
        )
    path = data_dir / DEV_KEY_FILE
    if not path.exists() and reader.meta_names(WRAP_PREFIX):
        # Checked before a key file is made: a refusal must leave nothing behind.
        raise MasterKeyError(
            f"{data_dir} was initialised with a MASTER_KEY (there is no {DEV_KEY_FILE}): "
            "set MASTER_KEY to that key. Refusing to start in development mode; nothing "
            "was changed."
        )
    master, created = load_or_create_dev_key(path)
    log.warning(
        "DEVELOPMENT MODE: no MASTER_KEY given; secrets are sealed under %s%s. "
        "Anyone who can read that file can read every key. Set MASTER_KEY in production.",
        path,
        " (just created)" if created else "",
        extra={"category": "security"},
    )
    return master, None


async def unlock(
    store: Store,
    data_dir: Path,
    master_key: str | None,
    production: bool,
    clock: Clock | None = None,
) -> tuple[Keyring, MasterKey]:
    """Open the keyring (creating it on first start) and protect the store's rows.

    Several replicas may start at once on an empty database. The first start claims the
    keyring's revision (an insert that does nothing when the row exists), so exactly one
    of them stores a keyring; the others find the claim taken, wait for its commit, and
    start over reading what it stored, its scrypt salt included."""
    clock = clock or SystemClock()
    for _ in range(2):
        master, salt = master_key_from(store, data_dir, master_key, production)
        reader = store.read()
        # In this order: a keyring another process stores between the reads is then seen
        # by the later ones, never taken for one sealed under another master key, nor for
        # a lost one (its revision and its wrap are stored in one transaction).
        claimed = reader.get_meta(REVISION)
        initialised = bool(reader.meta_names(""))
        sealed = reader.meta_names(WRAP_PREFIX)
        wrapped = reader.get_meta(WRAP_PREFIX + fingerprint(master))
        if wrapped is None and sealed and master_key:
            master, wrapped = _unstretched(reader.get_meta, master_key, master)
        if wrapped is not None:
            keyring = Keyring(KeyringData.unwrap(wrapped, master))
            store.protect(keyring.protection)
            if keyring.data.integrity < ROW_MACS:
                await _protect_rows(store, keyring, master, clock)
            return keyring, master
        if sealed:
            raise MasterKeyError(
                f"the master key ({master.source}) is not the one this data directory was "
                "sealed with (no keyring is wrapped for it). Refusing to start; nothing was "
                "changed."
            )
        if claimed is not None or initialised:
            raise MasterKeyError(_lost_keyring(store, data_dir, claimed))
        keyring = Keyring(KeyringData.fresh())
        store.protect(keyring.protection)

        def first_start(
            repo: Repository,
            keyring: Keyring = keyring,
            master: MasterKey = master,
            salt: bytes | None = salt,
        ) -> bool:
            if not repo.claim_meta(REVISION, str(keyring.revision).encode()):
                return False
            repo.set_meta(WRAP_PREFIX + fingerprint(master), keyring.data.wrap(master))
            if salt is not None:
                repo.set_meta("master_salt", salt)
            # The first entry of every audit log: an empty or shorter log is a truncation.
            _audit(repo, keyring, clock, "keyring.create", fingerprint(master), {})
            return True

        if await store.write(first_start):
            return keyring, master
        log.info(
            "another process initialised the keyring at the same time; using it",
            extra={"category": "security"},
        )
    raise MasterKeyError("the keyring was claimed by another process but cannot be read")


def _unstretched(
    get_meta: Callable[[str], bytes | None], value: str, master: MasterKey
) -> tuple[MasterKey, bytes | None]:
    """The keyring a release before the strict reading of MASTER_KEY wrapped under a
    passphrase it took for raw bytes, if there is one: it is opened, and the log says to
    rotate, since such a master key is as weak as the passphrase."""
    legacy = legacy_master_key(value)
    wrapped = None if legacy is None else get_meta(WRAP_PREFIX + fingerprint(legacy))
    if legacy is None or wrapped is None:
        return master, None
    log.warning(
        "MASTER_KEY is a passphrase that an earlier release read as a raw key without "
        "stretching it (its characters happened to decode as 32 bytes), and this data "
        "directory's keyring is wrapped under it so: the master key is only as strong as "
        "the passphrase. Rotate it: keyturn master-key rotate with NEW_MASTER_KEY set to "
        "32 random bytes (openssl rand -hex 32), or to a passphrase, which is then "
        "stretched with scrypt.",
        extra={"category": "security"},
    )
    return legacy, wrapped


def _lost_keyring(store: Store, data_dir: Path, revision: bytes | None) -> str:
    """Why a store that was initialised has no keyring, and what to do. Before, a start
    took it for a race with another first start ("claimed by another process but cannot
    be read"), or, with the revision gone too, made a new keyring over the old data and
    then failed on the first row it could not authenticate ("the stored config row ...
    was altered")."""
    what = f"keyring revision {revision.decode(errors='replace')}" if revision else "data"
    if isinstance(store, SqliteStore):
        where = str(data_dir / DB_FILE)
        restore = f"keyturn backup restore <backup> --data-dir {data_dir}"
    else:
        where, restore = "the database", "your database's own backups"
    return (
        f"the keyring is missing from {where}: it holds {what} but no keyring wrapped for "
        "any master key (its rows were deleted), and without it nothing stored can be read. "
        f"Restore it from a backup ({restore}). Refusing to start; nothing was changed."
    )


async def _protect_rows(store: Store, keyring: Keyring, master: MasterKey, clock: Clock) -> None:
    """The first start of a data directory made before row MACs: every row gets its MAC
    as it stands, and the keyring records it, so that this is never done again. In units
    of PROTECT_UNIT rows, each committed with its position sealed in the keyring: on a
    large store this takes minutes, and before, it was one transaction, so a start
    stopped half-way (an orchestrator's probe, an impatient operator) had done nothing,
    and the next began again from the first row, saying nothing meanwhile."""

    def work(repo: Repository) -> tuple[int, bool, bool] | None:
        # Replicas starting at once take turns: each unit claims the keyring's row, and
        # reads where the last one stopped only then (None: another replica has it).
        if not repo.lock_meta(WRAP_PREFIX + fingerprint(master)):
            return None
        wrapped = repo.get_meta(WRAP_PREFIX + fingerprint(master))
        if wrapped is None:
            raise MasterKeyError("the keyring was retired while this server started")
        data = KeyringData.unwrap(wrapped, master)
        if data.integrity >= ROW_MACS:
            return -1, True, False  # another process did it meanwhile
        resumed = bool(data.protect_from)
        count, data.protect_from = repo.tag_rows(data.protect_from, PROTECT_UNIT)
        data.protected_rows += count
        done = not data.protect_from
        if done:
            data.integrity = ROW_MACS
            rows = {"rows": str(data.protected_rows)}
            _audit(repo, keyring, clock, "store.protect", "rows", rows)
        repo.set_meta(WRAP_PREFIX + fingerprint(master), data.wrap(master))
        return data.protected_rows, done, resumed

    said = time.monotonic()
    first = True
    while True:
        unit = await store.write(work)
        if unit is None:
            await asyncio.sleep(PROTECT_TURN)
            continue
        count, done, resumed = unit
        if first and resumed:
            log.warning(
                "going on giving rows written before row MACs theirs, where an earlier start "
                "stopped",
                extra={"category": "security", "rows": count},
            )
        first = False
        if done:
            break
        if time.monotonic() - said >= PROTECT_SAY_EVERY:
            said = time.monotonic()
            log.warning(
                f"giving rows written before row MACs theirs: {count} so far (a restart goes "
                "on from there)",
                extra={"category": "security", "rows": count},
            )
    keyring.data.integrity = ROW_MACS
    if count >= 0:
        log.warning(
            "rows written before row MACs were given theirs (once, now)",
            extra={"category": "security", "rows": count},
        )


def _audit(
    repo: Repository,
    keyring: Keyring,
    clock: Clock,
    action: str,
    resource_id: str,
    details: dict[str, str],
) -> None:
    chain = AuditChain(keyring.audit_key)
    now = clock.now()
    draft = AuditDraft(
        action=action,
        principal=SYSTEM.name,
        role=SYSTEM.role.value,
        resource_type="keyring" if action.startswith("keyring") else "store",
        resource_id=resource_id,
        details=details,
    )
    repo.append_audit(draft, now, lambda previous, seq: chain.link(previous, seq, now, draft))


def reload_keyring(store: Store, keyring: Keyring, master: MasterKey) -> str:
    """Pick up a keyring that `keyturn master-key rotate` changed while we run.
    Returns what happened: "", "reloaded" or "retired" (our master key was rotated out)."""
    reader = store.read()
    raw = reader.get_meta(REVISION)
    if raw is None or int(raw.decode()) <= keyring.revision:
        return ""
    wrapped = reader.get_meta(WRAP_PREFIX + fingerprint(master))
    if wrapped is None:
        keyring.behind = True
        return "retired"
    keyring.load(KeyringData.unwrap(wrapped, master))
    return "reloaded"


def open_store(settings: Settings, *, upgrade: bool = True) -> Store:
    """The store ``settings`` name; ``upgrade=False`` (operator commands): one of an older
    schema is refused, not upgraded under the servers that use it."""
    if settings.store.startswith(("postgres://", "postgresql://")):
        from keyturn_server.store.postgres import PostgresStore

        store: Store = PostgresStore(
            settings.store, lease_ttl=settings.scheduler_lease_ttl, upgrade=upgrade
        )
        return store
    if settings.store:
        raise ValueError(
            f"--store {settings.store.split(':')[0]}:... is not supported; "
            "use postgresql://... or leave it empty for SQLite"
        )
    # Workers share the file: their commit listeners read every process's events.
    return SqliteStore(
        settings.data_dir / DB_FILE, shared=settings.worker is not None, upgrade=upgrade
    )


async def prepare(settings: Settings, clock: Clock | None = None) -> str | None:
    """What a first start creates, done once before ``--workers`` start so that they do
    not race for it: the schema, the keyring (and a development master key), the stored
    configuration and the admin token. Returns the admin token when it was created."""
    clock = clock or SystemClock()
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.data_dir, 0o700)
    store = open_store(settings)
    try:
        keyring, _ = await unlock(
            store, settings.data_dir, settings.master_key, settings.production, clock
        )
        journal = Journal(AuditLog(AuditChain(keyring.audit_key), logs.audit_line), clock)
        await ConfigService(store, journal, clock).load()
        tokens = AccessTokenService(store, keyring, journal, clock)
        supervisor = settings.replica_name or f"{socket.gethostname()}:{os.getpid()}"
        return await tokens.bootstrap_admin(settings.data_dir, supervisor)
    finally:
        await store.close()
