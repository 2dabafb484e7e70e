"""Access tokens in SQL."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from keyturn_server.clock import to_micros
from keyturn_server.domain.access_tokens import AccessToken
from keyturn_server.store import rows
from keyturn_server.store.sql.statements import SqlBase, insert, update_row


class TokenSql(SqlBase):
    def insert_token(self, token: AccessToken) -> None:
        self._run(*insert("access_tokens", rows.token_row(token)))

    def update_token(self, token: AccessToken) -> None:
        self._run(*update_row("access_tokens", rows.token_row(token), ("name",)))

    def get_token(self, name: str) -> AccessToken | None:
        row = self._one("SELECT * FROM access_tokens WHERE name = ?", (name,))
        return None if row is None else rows.token_from_row(row)

    def token_by_digest(self, digest: bytes) -> AccessToken | None:
        row = self._one("SELECT * FROM access_tokens WHERE digest = ?", (digest,))
        return None if row is None else rows.token_from_row(row)

    def list_tokens(self, include_revoked: bool) -> list[AccessToken]:
        where = "" if include_revoked else " WHERE revoke_time IS NULL"
        found = self._all(f"SELECT * FROM access_tokens{where} ORDER BY name")
        return [rows.token_from_row(r) for r in found]

    def touch_tokens(self, used: Mapping[str, datetime]) -> None:
        for name, when in used.items():
            self._run(
                "UPDATE access_tokens SET last_used_time = ? WHERE name = ?",
                (to_micros(when), name),
            )
