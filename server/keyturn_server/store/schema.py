"""Versioned schema migrations: numbered SQL files, applied in order, once."""

from __future__ import annotations

from importlib import resources

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
