"""Unlocking a data directory: find the master key, open the keyring it wraps, or create
both on first start. Shared by `keyturn serve` and the operator commands."""

from __future__ import annotations

import logging
from pathlib import Path

from keyturn_server.crypto.keyring import REVISION, WRAP_PREFIX, Keyring, KeyringData, fingerprint
from keyturn_server.crypto.master import (
    MasterKey,
    MasterKeyError,
    load_or_create_dev_key,
    needs_salt,
    new_salt,
    parse_master_key,
)
from keyturn_server.domain.repositories import MetaRepository, Store

log = logging.getLogger("keyturn.security")


def master_key_from(
    store: Store, data_dir: Path, master_key: str | None, production: bool
) -> tuple[MasterKey, bytes | None]:
    """The master key to use, and a new scrypt salt to store when one was made."""
    salt = store.read().get_meta("master_salt")
    if master_key:
        fresh = new_salt() if needs_salt(master_key) and salt is None else None
        return parse_master_key(master_key, salt or fresh), fresh
    if production:
        raise MasterKeyError(
            "MASTER_KEY is required in production (--production or KEYTURN_ENV=production): "
            "32 random bytes as hex or base64, or a long passphrase"
        )
    master, created = load_or_create_dev_key(data_dir / "master.key")
    log.warning(
        "DEVELOPMENT MODE: no MASTER_KEY given; secrets are sealed under %s%s. "
        "Anyone who can read that file can read every key. Set MASTER_KEY in production.",
        data_dir / "master.key",
        " (just created)" if created else "",
        extra={"category": "security"},
    )
    return master, None


async def unlock(
    store: Store, data_dir: Path, master_key: str | None, production: bool
) -> tuple[Keyring, MasterKey]:
    master, salt = master_key_from(store, data_dir, master_key, production)
    reader = store.read()
    wrapped = reader.get_meta(WRAP_PREFIX + fingerprint(master))
    if wrapped is not None:
        return Keyring(KeyringData.unwrap(wrapped, master)), master
    if reader.meta_names(WRAP_PREFIX):
        raise MasterKeyError(
            f"the master key ({master.source}) is not the one this data directory was sealed "
            "with (no keyring is wrapped for it). Refusing to start; nothing was changed."
        )
    data = KeyringData.fresh()

    def first_start(repo: MetaRepository) -> None:
        if repo.meta_names(WRAP_PREFIX):
            raise MasterKeyError("another process initialised this data directory meanwhile")
        repo.set_meta(WRAP_PREFIX + fingerprint(master), data.wrap(master))
        repo.set_meta(REVISION, str(data.revision).encode())
        if salt is not None:
            repo.set_meta("master_salt", salt)

    await store.write(first_start)
    return Keyring(data), master


def reload_keyring(store: Store, keyring: Keyring, master: MasterKey) -> str:
    """Pick up a keyring that `keyturn master-key rotate` changed while we run.
    Returns what happened: "", "reloaded" or "retired" (our master key was rotated out)."""
    reader = store.read()
    raw = reader.get_meta(REVISION)
    if raw is None or int(raw.decode()) <= keyring.revision:
        return ""
    wrapped = reader.get_meta(WRAP_PREFIX + fingerprint(master))
    if wrapped is None:
        return "retired"
    keyring.load(KeyringData.unwrap(wrapped, master))
    return "reloaded"
