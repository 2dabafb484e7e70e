"""Versioned schema migrations: numbered SQL files, applied in order, once."""

from __future__ import annotations

import logging
from importlib import resources

from keyturn_server.domain.errors import Unavailable

log = logging.getLogger("keyturn.store")

DIALECTS = {
    "sqlite": {"{{BLOB}}": "BLOB", "{{SEQUENCE}}": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgres": {
        "{{BLOB}}": "BYTEA",
        "{{SEQUENCE}}": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    },
}


def migrations(dialect: str) -> list[tuple[int, str]]:
    """(version, SQL) for every migration file, in order, rendered for ``dialect``."""
    found = []
    for entry in resources.files("keyturn_server.store.migrations").iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        sql = entry.read_text()
        for placeholder, value in DIALECTS[dialect].items():
            sql = sql.replace(placeholder, value)
        found.append((int(name.split("_", 1)[0]), sql))
    return sorted(found)


LATEST = max(v for v, _ in migrations("sqlite"))


def not_upgraded(server: str) -> str:
    """Why an operator command (`keyturn token`, `keyturn master-key`...) of a newer
    Keyturn leaves an older store as it is. Before, it upgraded the schema under the
    running older servers, which then refused every write until restarted: routine
    commands run after installing the new version and before restarting stopped the
    service."""
    return (
        f"{server} is an older Keyturn, and a command does not upgrade its store under it "
        "(it would stop writing). Use the keyturn command of that version, or restart it "
        "with this one first (its start upgrades the store). Nothing was changed"
    )


def going_back(back: str) -> str:
    """What an operator can do with a store a newer Keyturn upgraded: ``back`` says how
    to return to this version's schema. Before, the refusal said only that the schema
    was newer, on the day a bad release was being rolled back."""
    return (
        "a newer Keyturn upgraded it. Run that version (or a newer one); or, to go back to "
        f"this one, {back} (what was written since the upgrade is lost). Nothing was changed"
    )


class NewerSchema:
    """Whether a newer Keyturn has upgraded the schema under this running server.

    The schema is checked at start; a newer server (the first replica of a rolling
    upgrade, a newer `keyturn` command on the data directory) may upgrade it later, and
    this one would go on writing rows in its own format: rows without the columns the
    newer code requires, counts in tables the newer code no longer reads. So once the
    store finds a newer version it stops writing for good (UNAVAILABLE, SCHEMA_NEWER:
    callers retry on an upgraded replica), health says NOT_SERVING, and the log says so
    once. Reads go on."""

    def __init__(self, mine: int) -> None:
        self.mine = mine
        self.found = 0

    def see(self, version: int) -> bool:
        """Note the database's version; whether it is newer than this server's."""
        if version > self.mine and not self.found:
            self.found = version
            log.error(
                "the database schema was upgraded by a newer Keyturn; this server no longer "
                "writes to it: upgrade and restart it",
                extra={"category": "error", "schema": version, "server_schema": self.mine},
            )
        return bool(self.found)

    @property
    def problem(self) -> str:
        return (
            f"the database has schema {self.found}, newer than this server's {self.mine}: "
            "upgrade this server"
            if self.found
            else ""
        )

    def refusal(self) -> Unavailable:
        return Unavailable(
            f"this server is older than its database (schema {self.mine} < {self.found}) and "
            "no longer writes to it; nothing of this request was done: retry on an upgraded "
            "server",
            reason="SCHEMA_NEWER",
        )
