"""The keyring: random data keys, wrapped under the master key (envelope encryption).

The master key never seals a secret itself. It wraps one small keyring holding:
- the sealing keys for secrets at rest, by generation (the current one seals);
- the key of the keyed digests under which tokens are stored;
- the key of the audit chain, which is also the root of the integrity keys (row MACs,
  the audit anchor, page tokens: crypto/integrity.py).

Rotating the master key therefore re-wraps the keyring and moves every sealed value to a
new sealing generation, while token digests, the audit chain and row MACs stay valid. The wrapped
keyring is stored once per master key that may open it, named by the master key's
fingerprint; removing a wrap is what retires a master key.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyturn_server.crypto import native
from keyturn_server.crypto.algorithms import HANDLE_ALGORITHMS
from keyturn_server.crypto.integrity import ROW_MACS, Mac, Protection, derive
from keyturn_server.crypto.master import MasterKey, MasterKeyError
from keyturn_server.crypto.seal import Sealer

WRAP_PREFIX = "keyring.wrap."
REVISION = "keyring.revision"
_WRAP_AAD = b"keyturn/v1|keyring"


def fingerprint(master: MasterKey) -> str:
    """A public name for a master key (not a way to find it)."""
    return master.derive("fingerprint")[:8].hex()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class KeyringData:
    revision: int
    current: int
    seal_keys: dict[int, bytes]
    token_key: bytes
    audit_key: bytes = field(repr=False)
    #: Row protection in force (crypto.integrity.ROW_MACS once every row carries a MAC).
    #: Kept here, under the master key, because a database writer can drop any marker
    #: the database holds, and a second backfill would bless the rows forged meanwhile.
    integrity: int = 0
    #: While rows get their MACs (integrity still 0): where the next unit goes on from,
    #: and how many rows got theirs so far. Sealed for the same reason.
    protect_from: str = ""
    protected_rows: int = 0
    #: The first sealing generation that seals with 192-bit nonces (crypto/seal.py format
    #: 2); 0 in a keyring made before them, until a master key rotation adds a generation.
    #: An older server ignores it and seals in format 1, which every server opens.
    wide_from: int = 0

    @staticmethod
    def fresh() -> KeyringData:
        return KeyringData(
            1,
            1,
            {1: secrets.token_bytes(32)},
            secrets.token_bytes(32),
            secrets.token_bytes(32),
            integrity=ROW_MACS,
            wide_from=1,
        )

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "revision": self.revision,
                "current": self.current,
                "seal_keys": {str(g): _b64(k) for g, k in self.seal_keys.items()},
                "token_key": _b64(self.token_key),
                "audit_key": _b64(self.audit_key),
                "integrity": self.integrity,
                "protect_from": self.protect_from,
                "protected_rows": self.protected_rows,
                "wide_from": self.wide_from,
            }
        ).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> KeyringData:
        data = json.loads(raw)
        return KeyringData(
            revision=int(data["revision"]),
            current=int(data["current"]),
            seal_keys={int(g): base64.b64decode(k) for g, k in data["seal_keys"].items()},
            token_key=base64.b64decode(data["token_key"]),
            audit_key=base64.b64decode(data["audit_key"]),
            integrity=int(data.get("integrity", 0)),
            protect_from=str(data.get("protect_from", "")),
            protected_rows=int(data.get("protected_rows", 0)),
            wide_from=int(data.get("wide_from", 0)),
        )

    def wrap(self, master: MasterKey) -> bytes:
        nonce = os.urandom(12)
        kek = AESGCM(master.derive("keyring-wrap"))
        return nonce + kek.encrypt(nonce, self.to_bytes(), _WRAP_AAD)

    @staticmethod
    def unwrap(blob: bytes, master: MasterKey) -> KeyringData:
        kek = AESGCM(master.derive("keyring-wrap"))
        try:
            return KeyringData.from_bytes(kek.decrypt(blob[:12], blob[12:], _WRAP_AAD))
        except (InvalidTag, ValueError, KeyError):
            raise MasterKeyError(
                f"the keyring wrapped for {master.source} does not open: "
                "wrong master key, or the stored keyring was altered"
            ) from None


class Keyring:
    """The unwrapped keyring in memory. It can be reloaded in place when another process
    rotates the master key, so every service holding it sees the new generation."""

    def __init__(self, data: KeyringData, *, use_native: bool = True) -> None:
        self._use_native = use_native and native.api is not None
        self.load(data)
        #: Reloads the keyring from the store; set by the server so that a value sealed
        #: under a generation made moments ago elsewhere can still be opened.
        self.reloader: Callable[[], object] | None = None
        #: The store holds a newer keyring that this process's master key cannot unwrap
        #: (it was rotated out, and the keyring moved on since): values sealed under the
        #: newer generations cannot be opened here until a restart with the current key.
        self.behind = False

    def load(self, data: KeyringData) -> None:
        self.data = data
        self.sealer = Sealer(data.seal_keys, data.current, data.wide_from)
        self._token_key = data.token_key
        # Keyed state made once: a copy per digest skips the key schedule, and unlike the
        # one-shot hmac.digest it keeps the GIL (which the one-shot releases, handing it
        # to whichever thread waits: 22-29 µs per digest in the server, 2 µs in a loop).
        self._token_macs = {a: hmac.new(data.token_key, digestmod=a) for a in HANDLE_ALGORITHMS}
        self._native_mac = (
            native.api.TokenMac(data.token_key)
            if self._use_native and native.api is not None
            else None
        )
        self.audit_key = data.audit_key
        self.protection = Protection.derived_from(data.audit_key)
        self.page_mac = Mac(derive(data.audit_key, "page-token"))

    @property
    def revision(self) -> int:
        return self.data.revision

    @property
    def generation(self) -> int:
        return self.data.current

    def seal(self, plaintext: bytes, binding: bytes) -> bytes:
        return self.sealer.seal(plaintext, binding)

    def open(self, blob: bytes, binding: bytes) -> bytes:
        """Open a sealed value; a generation this process has not loaded yet triggers one
        reload of the keyring first (a master key rotation in progress elsewhere)."""
        if (
            self.reloader is not None
            and len(blob) >= 5
            and Sealer.generation_of(blob) not in self.data.seal_keys
        ):
            self.reloader()
        return self.sealer.open(blob, binding)

    def digest(self, secret: str, algorithm: str = "sha256") -> bytes:
        """Keyed digest of a bearer secret: what the store keeps instead of the secret."""
        if self._native_mac is not None:
            return self._native_mac.digest(secret, algorithm)
        mac = self._token_macs[algorithm].copy()
        mac.update(secret.encode())
        return mac.digest()
