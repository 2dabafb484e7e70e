"""Key material: made outside the unit of work (:mod:`generation`), sealed inside it
bound to its (key, version), and opened at most once per version while it stays in a
small cache.

Opening is what costs: an RSA private key is validated when loaded (~54 ms), so a loaded
version is kept (LRU) until its key is removed or its version expires.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime

from keyturn_server.crypto import material
from keyturn_server.crypto.keyring import Keyring
from keyturn_server.crypto.seal import GenerationNotLoaded, SealError, binding
from keyturn_server.domain.access import Principal
from keyturn_server.domain.errors import DataLoss, FailedPrecondition, NotFound, Unavailable
from keyturn_server.domain.keys import Key, KeyState, KeyVersion, VersionState
from keyturn_server.domain.repositories import Store
from keyturn_server.domain.statistics import Statistics

KEY_TABLE = "key_versions"
CACHE_SIZE = 4096

security = logging.getLogger("keyturn.security")


def material_binding(key_id: str, version: int) -> bytes:
    """What a version's sealed material is bound to."""
    return binding(KEY_TABLE, key_id, version)


def require_version_usable(key: Key, version: KeyVersion, now: datetime) -> None:
    """Refuse a version that is past its max lifetime (material destroyed) or disabled."""
    if not version.live(now):
        raise FailedPrecondition(
            f"version {version.version} of key {key.id!r} expired at "
            f"{version.expire_time.isoformat()}; its material is destroyed",
            reason="VERSION_EXPIRED",
        )
    if version.state is VersionState.DISABLED:
        raise version_disabled(key, version)


def version_disabled(key: Key, version: KeyVersion) -> FailedPrecondition:
    if version.state is VersionState.DISABLED:
        said = "is disabled; EnableKeyVersion restores it"
    else:
        said = "expired while disabled; it stays refused"
    return FailedPrecondition(
        f"version {version.version} of key {key.id!r} {said}",
        reason="VERSION_DISABLED",
        metadata={"version": str(version.version)},
    )


def contained_use(principal: Principal, key: Key, number: int, operation: str) -> None:
    """A use of a disabled version, refused: one security line naming the key, the
    version and who asked, for the incident that contained it. The access log line of
    the call names only the method and the caller. Refusals only: a successful use
    costs nothing more (Cloud KMS's Data Access logs, for the uses that matter here)."""
    security.warning(
        "a disabled key version was asked for and refused",
        extra={
            "category": "security",
            "resource": f"key/{key.id}",
            "version": number,
            "operation": operation,
            "principal": principal.name,
            "peer": principal.peer,
        },
    )


class MaterialCache:
    """Versions opened for use, most recently used last."""

    def __init__(self, store: Store, keyring: Keyring, stats: Statistics) -> None:
        self._store = store
        self._keyring = keyring
        self._stats = stats
        self._loaded: OrderedDict[tuple[str, int], material.LoadedVersion] = OrderedDict()

    def seal(self, key_id: str, version: int, secret: bytes) -> bytes:
        return self._keyring.seal(secret, material_binding(key_id, version))

    def load(
        self, key: Key, number: int, now: datetime, by: Principal | None = None, use: str = ""
    ) -> material.LoadedVersion:
        """Version ``number`` of ``key``, ready to use, if it is still enabled; a refusal
        because it is disabled is logged with who asked (``by``) for what (``use``)."""
        version = key.version(number)
        if version is None:
            raise NotFound(f"key {key.id!r} has no version {number}", reason="VERSION_NOT_FOUND")
        if by is not None and version.disabled_by is not None:  # disabled, or expired so
            contained_use(by, key, number, use)
        require_version_usable(key, version, now)
        cached = self._loaded.get((key.id, number))
        if cached is not None:
            self._loaded.move_to_end((key.id, number))
            return cached
        sealed = self._store.read().sealed_material(key.id, number)
        if sealed is None:
            raise FailedPrecondition(f"version {number} of key {key.id!r} has no material")
        try:
            secret = self._keyring.open(sealed, material_binding(key.id, number))
        except GenerationNotLoaded as exc:
            if self._keyring.behind and exc.generation > self._keyring.generation:
                # Not tampering: this server runs on a master key rotated out twice over,
                # and a later rotation re-sealed the material under a generation it
                # cannot unwrap. Before, it said DATA_LOSS, altered, and counted it so.
                raise Unavailable(
                    f"the material of key {key.id!r} version {number} is sealed under a "
                    "newer keyring than this server holds: its master key was rotated "
                    "out; restart it with the current MASTER_KEY",
                    reason="MASTER_KEY_RETIRED",
                ) from None
            raise self._tampered(key.id, number) from None
        except SealError:
            raise self._tampered(key.id, number) from None
        loaded = material.LoadedVersion.load(key.id, number, key.algorithm, secret)
        self._loaded[(key.id, number)] = loaded
        if len(self._loaded) > CACHE_SIZE:
            self._loaded.popitem(last=False)
        return loaded

    def _tampered(self, key_id: str, number: int) -> DataLoss:
        self._stats.integrity_failures += 1
        return DataLoss(
            f"the stored material of key {key_id!r} version {number} failed authentication; "
            "it was altered or belongs to another record",
            reason="MATERIAL_TAMPERED",
        )

    def forget(self, key_id: str) -> None:
        """Drop every cached version of a key (removed or destroyed)."""
        for cached in [k for k in self._loaded if k[0] == key_id]:
            del self._loaded[cached]

    def drop_unusable(self, key: Key) -> None:
        """Forget what ``key``, as just read, says may no longer be used."""
        if key.state is not KeyState.ACTIVE:
            self.forget(key.id)
            return
        for version in key.versions:
            if not version.usable:
                self._loaded.pop((key.id, version.version), None)

    def forget_version(self, key_id: str, version: int) -> None:
        self._loaded.pop((key_id, version), None)
