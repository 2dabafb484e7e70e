"""API access tokens."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from keyturn_server.domain.access_tokens import AccessToken


class AccessTokenRepository(Protocol):
    def insert_token(self, token: AccessToken) -> bool:
        """Store a new token; False (and nothing changed) when one of that name exists:
        another writer (a replica) stored it since this unit looked."""
        ...

    def replace_revoked_token(self, token: AccessToken) -> bool:
        """Put ``token`` in place of the revoked token of its name; False (and nothing
        changed) when that name is not revoked now: another writer replaced it since."""
        ...

    def update_token(self, token: AccessToken) -> None: ...

    def get_token(self, name: str) -> AccessToken | None: ...

    def token_by_digest(self, digest: bytes) -> AccessToken | None: ...

    def list_tokens(self, include_revoked: bool) -> list[AccessToken]: ...

    def touch_tokens(self, used: Mapping[str, datetime]) -> None:
        """Record when tokens (by name) were last used."""
        ...
