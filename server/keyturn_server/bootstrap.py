"""Unlocking a data directory: find the master key, prove it is the right one, and derive
the keyring. Shared by `keyturn serve` and the operator commands that open the store."""

from __future__ import annotations

import logging
from pathlib import Path

from keyturn_server.crypto.keyring import Keyring
from keyturn_server.crypto.master import (
    MasterKeyError,
    load_or_create_dev_key,
    needs_salt,
    new_salt,
    parse_master_key,
)
from keyturn_server.store.base import Store
from keyturn_server.store.sql import SqlRepository

log = logging.getLogger("keyturn.security")


async def unlock(store: Store, data_dir: Path, master_key: str | None, production: bool) -> Keyring:
    reader = store.read()
    salt = reader.get_meta("master_salt")
    check = reader.get_meta("master_check")
    generation = int((reader.get_meta("master_generation") or b"1").decode())
    new_meta: dict[str, bytes] = {}
    if master_key:
        if needs_salt(master_key) and salt is None:
            salt = new_salt()
            new_meta["master_salt"] = salt
        master = parse_master_key(master_key, salt)
    elif production:
        raise MasterKeyError(
            "MASTER_KEY is required in production (--production or KEYTURN_ENV=production): "
            "32 random bytes as hex or base64, or a long passphrase"
        )
    else:
        master, created = load_or_create_dev_key(data_dir / "master.key")
        log.warning(
            "DEVELOPMENT MODE: no MASTER_KEY given; secrets are sealed under %s%s. "
            "Anyone who can read that file can read every key. Set MASTER_KEY in production.",
            data_dir / "master.key",
            " (just created)" if created else "",
            extra={"category": "security"},
        )
    keyring = Keyring(master, generation)
    if check is None:
        new_meta["master_check"] = keyring.check_value
        new_meta["master_generation"] = str(generation).encode()
    elif check != keyring.check_value:
        raise MasterKeyError(
            f"the master key ({master.source}) is not the one this data directory was sealed "
            "with: its check value differs. Refusing to start; nothing was changed."
        )
    if new_meta:

        def write(repo: SqlRepository) -> None:
            for name, value in new_meta.items():
                repo.set_meta(name, value)

        await store.write(write)
    return keyring
