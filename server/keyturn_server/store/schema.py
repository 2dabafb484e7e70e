"""Versioned schema migrations: numbered SQL files, applied in order, once."""

from __future__ import annotations

import logging
import re
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

#: How a migration says that servers of an older schema may go on writing once it is
#: applied: ``-- compatible-writers: N`` (servers of schema N or later), for a step that
#: changes nothing they read or write (an index, a table they never touch). Without it,
#: only servers of the step's own schema write (NewerSchema).
_COMPATIBLE = re.compile(r"^-- compatible-writers: (\d+)\s*$", re.MULTILINE)


def writers_from(version: int, sql: str) -> int:
    """The oldest schema whose servers may write once step ``version`` is applied."""
    declared = _COMPATIBLE.search(sql)
    return min(version, int(declared.group(1))) if declared else version


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
    once. Reads go on. On PostgreSQL a step may declare that it changes nothing older
    servers read or write (``-- compatible-writers: N``): servers of schema N or later
    then start and write on, and the log says once that an upgrade is due."""

    def __init__(self, mine: int) -> None:
        self.mine = mine
        self.found = 0
        #: A newer version whose steps all declare that this server may write on.
        self.compatible = 0

    def see(self, version: int, writers_from: int | None = None) -> bool:
        """Note the database's version, and the oldest schema whose servers every newer
        step lets write (PostgreSQL records it per step; None: the version itself);
        whether this server must stop writing."""
        if version > self.mine and (writers_from or version) <= self.mine:
            if version > self.compatible:
                self.compatible = version
                log.warning(
                    "the database schema was upgraded by a newer Keyturn, with steps that "
                    "keep this server's writes: serving on; upgrade it when you can",
                    extra={"category": "app", "schema": version, "server_schema": self.mine},
                )
            return bool(self.found)
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
