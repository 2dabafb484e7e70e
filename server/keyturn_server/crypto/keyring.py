"""Everything derived from the master key, in one place: the sealer for secrets at
rest, and the keys of the keyed digests (tokens) and of the audit chain."""

from __future__ import annotations

import hashlib
import hmac

from keyturn_server.crypto.master import MasterKey
from keyturn_server.crypto.seal import Sealer


class Keyring:
    def __init__(
        self, current: MasterKey, generation: int = 1, previous: dict[int, MasterKey] | None = None
    ) -> None:
        keys = {g: m.derive("seal") for g, m in (previous or {}).items()}
        keys[generation] = current.derive("seal")
        self.sealer = Sealer(keys, generation)
        self.generation = generation
        self._token_key = current.derive("token-digest")
        self.audit_key = current.derive("audit-chain")
        self.check_value = current.check_value()

    def digest(self, secret: str, algorithm: str = "sha256") -> bytes:
        """Keyed digest of a bearer secret: what the store keeps instead of the secret."""
        return hmac.new(self._token_key, secret.encode(), getattr(hashlib, algorithm)).digest()
