"""Access tokens in SQL. A tampered row authenticates nobody and lists as absent; read
by name (to manage it) it is DATA_LOSS."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from keyturn_server.clock import to_micros
from keyturn_server.domain.access_tokens import AccessToken
from keyturn_server.store import rows
from keyturn_server.store.integrity import TOKEN_COLUMNS, columns_of, tampered
from keyturn_server.store.rows import Row
from keyturn_server.store.sql.statements import SqlBase, insert, update_row


class TokenSql(SqlBase):
    def insert_token(self, token: AccessToken) -> bool:
        sql, params = insert("access_tokens", self._tagged_token(token))
        # A concurrent insert of the same name makes this wait for its commit, then
        # insert nothing: the loser learns it lost without an error (a unique violation
        # was ABORTED, "retry", where the answer is ALREADY_EXISTS).
        return self._one(f"{sql} ON CONFLICT (name) DO NOTHING RETURNING name", params) is not None

    def replace_revoked_token(self, token: AccessToken) -> bool:
        sql, params = update_row("access_tokens", self._tagged_token(token), ("name",))
        # Of two replacements at once (replicas) the second finds the name live again.
        found = self._one(f"{sql} AND revoke_time IS NOT NULL RETURNING name", params)
        return found is not None

    def update_token(self, token: AccessToken) -> None:
        self._run(*update_row("access_tokens", self._tagged_token(token), ("name",)))

    def _tagged_token(self, token: AccessToken) -> dict[str, Any]:
        row = rows.token_row(token)
        row["mac"] = self._integrity.tag("access_tokens", columns_of(row, TOKEN_COLUMNS))
        return row

    def _authentic_token(self, row: Row) -> AccessToken | None:
        fields = columns_of(row, TOKEN_COLUMNS)
        if not self._integrity.intact("access_tokens", fields, row["mac"], row["name"]):
            return None
        return rows.token_from_row(row)

    def get_token(self, name: str) -> AccessToken | None:
        row = self._one("SELECT * FROM access_tokens WHERE name = ?", (name,))
        if row is None:
            return None
        token = self._authentic_token(row)
        if token is None:
            raise tampered("access_tokens", name)
        return token

    def token_by_digest(self, digest: bytes) -> AccessToken | None:
        row = self._one("SELECT * FROM access_tokens WHERE digest = ?", (digest,))
        return None if row is None else self._authentic_token(row)

    def list_tokens(self, include_revoked: bool) -> list[AccessToken]:
        where = "" if include_revoked else " WHERE revoke_time IS NULL"
        found = self._all(f"SELECT * FROM access_tokens{where} ORDER BY name")
        return [t for r in found if (t := self._authentic_token(r)) is not None]

    def touch_tokens(self, used: Mapping[str, datetime]) -> None:
        for name, when in sorted(used.items()):  # one lock order for every replica
            self._run(
                "UPDATE access_tokens SET last_used_time = ? WHERE name = ?",
                (to_micros(when), name),
            )
