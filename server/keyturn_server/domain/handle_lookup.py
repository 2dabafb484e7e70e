"""Which handle a secret token names, without using it: no usage is counted and no anomaly
is recorded. For routes that name a handle and accept its token in place of its public id
(the specification's REST API, where a generated handle's id *is* its token)."""

from __future__ import annotations

from keyturn_server.clock import Clock
from keyturn_server.crypto.keyring import Keyring
from keyturn_server.domain import tokens
from keyturn_server.domain.access import Permission, Principal
from keyturn_server.domain.config_service import ConfigService
from keyturn_server.domain.errors import NotFound
from keyturn_server.domain.repositories import Store
from keyturn_server.domain.token_digests import TokenDigests


def looks_like_token(value: str) -> bool:
    """Tokens carry the ``kt_`` prefix; public handle ids never do."""
    return value.startswith(f"{tokens.PREFIX}_")


class HandleLookup:
    def __init__(self, store: Store, keyring: Keyring, config: ConfigService, clock: Clock):
        self._store = store
        self._digests = TokenDigests(keyring, config)
        self._clock = clock

    def handle_id(self, principal: Principal, token: str) -> str:
        """The public id of the handle whose current secret (or previous one, inside its
        grace period) is ``token``. Unknown, superseded and other owners' tokens are all
        NOT_FOUND alike, as for an unknown handle id."""
        principal.require(Permission.HANDLE_READ)
        parsed = tokens.parse(token)
        missing = NotFound("no handle has this token", reason="HANDLE_NOT_FOUND")
        if parsed is None:
            raise missing
        reader = self._store.read()
        secret = next((s for d in self._digests.every(parsed) if (s := reader.get_secret(d))), None)
        handle = reader.get_handle(secret.handle_id) if secret is not None else None
        if secret is None or handle is None:
            raise missing
        if not (principal.sees_all() or principal.name == handle.owner):
            raise missing
        in_grace = secret.grace_until is not None and self._clock.now() < secret.grace_until
        if secret.generation != handle.generation and not in_grace:
            raise missing
        return handle.id
