"""Which handle a secret token names, without using it: no usage is counted and no anomaly
is recorded. For routes that name a handle and accept its token in place of its public id
(the specification's REST API, where a generated handle's id *is* its token)."""

from __future__ import annotations

from typing import Protocol

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


class Presenters(Protocol):
    """Refused presentations, counted per presenter (the validation engine's count)."""

    def throttled(self, principal: Principal) -> bool: ...

    async def refused(self, principal: Principal) -> None: ...


class HandleLookup:
    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        config: ConfigService,
        clock: Clock,
        presenters: Presenters,
    ):
        self._store = store
        self._digests = TokenDigests(keyring, config)
        self._clock = clock
        self._presenters = presenters

    async def handle_id(self, principal: Principal, token: str) -> str:
        """The public id of the handle whose current secret (or previous one, inside its
        grace period) is ``token``. Unknown, superseded and other owners' tokens are all
        NOT_FOUND alike, as for an unknown handle id.

        A lookup is a presentation: each refusal counts against the presenter, and a
        throttled presenter is answered NOT_FOUND without a lookup, as ValidateHandle
        answers it. Before, these lookups were neither counted nor throttled, so stolen
        tokens could be tried here at the caller's full rate, unseen by flood detection."""
        principal.require(Permission.HANDLE_READ)
        found = None if self._presenters.throttled(principal) else self._find(principal, token)
        if found is None:
            await self._presenters.refused(principal)
            raise NotFound("no handle has this token", reason="HANDLE_NOT_FOUND")
        return found

    def _find(self, principal: Principal, token: str) -> str | None:
        parsed = tokens.parse(token)
        if parsed is None:
            return None
        reader = self._store.read()
        secret = next((s for d in self._digests.every(parsed) if (s := reader.get_secret(d))), None)
        handle = reader.get_handle(secret.handle_id) if secret is not None else None
        if secret is None or handle is None:
            return None
        if not (principal.sees_all() or principal.name == handle.owner):
            return None
        in_grace = secret.grace_until is not None and self._clock.now() < secret.grace_until
        if secret.generation != handle.generation and not in_grace:
            return None
        return handle.id
