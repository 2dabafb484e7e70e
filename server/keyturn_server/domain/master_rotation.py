"""Rotating the master key online, without taking the service down.

1. The keyring gains a new sealing generation, which becomes current, and is wrapped for
   both the old and the new master key. Running servers reload it within seconds and seal
   new values with the new generation.
2. Every sealed value (key material, pending handle successors, tokens in the event log)
   is opened and sealed again under the new generation, in small transactions.
3. A last sweep, in the same transaction that deletes the old master key's wrap, catches
   values sealed meanwhile by a server that had not reloaded yet. From then on the old
   master key opens nothing here (backups taken earlier remain sealed under it).

Token digests and the audit chain use keyring keys that do not change, so every token
stays valid and the chain keeps verifying.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from keyturn_server.crypto.keyring import REVISION, WRAP_PREFIX, Keyring, KeyringData, fingerprint
from keyturn_server.crypto.master import MasterKey, MasterKeyError
from keyturn_server.crypto.seal import Sealer
from keyturn_server.domain.handle_lifecycle import successor_binding
from keyturn_server.domain.key_material import material_binding
from keyturn_server.domain.repositories import (
    Repository,
    SealedKind,
    SealedValue,
    SealedValues,
    Store,
)

BATCH = 200
#: Longer than a server's refresh interval (2 s), so that running servers seal with the
#: new generation before the sweep.
SETTLE_SECONDS = 3.0

#: Called with (what is being re-sealed, values re-sealed so far).
Progress = Callable[[str, int], None]
#: Writes an audit entry of the rotation in the transaction ``repo`` belongs to.
Audit = Callable[[Repository, str, "RotationReport"], None]


def _bound_to(value: SealedValue) -> bytes:
    if value.kind is SealedKind.KEY_MATERIAL:
        return material_binding(value.record_id, value.number)
    return successor_binding(value.record_id, value.number)


@dataclass
class RotationReport:
    generation: int = 0
    resealed: int = 0
    retired: str = ""
    #: The new master key's fingerprint.
    current: str = ""


async def rotate_master_key(
    store: Store,
    old: MasterKey,
    new: MasterKey,
    progress: Progress = lambda kind, n: None,
    settle_seconds: float = SETTLE_SECONDS,
    audit: Audit = lambda repo, action, report: None,
) -> RotationReport:
    """``audit`` records the new generation (``keyring.generation.add``) and the old
    master key's retirement (``keyring.rotate``), each in the transaction that does it:
    a rotation is a management action like any other, and the log is where an auditor
    looks for when the data stopped opening under a key."""
    if fingerprint(old) == fingerprint(new):
        raise MasterKeyError("the new master key is the old one")
    report = RotationReport(retired=fingerprint(old), current=fingerprint(new))

    def add_generation(repo: Repository) -> Keyring:
        wrapped = repo.get_meta(WRAP_PREFIX + fingerprint(old))
        if wrapped is None:
            raise MasterKeyError(f"no keyring is wrapped for the old master key ({old.source})")
        data = KeyringData.unwrap(wrapped, old)
        generation = max(data.seal_keys) + 1
        data.seal_keys[generation] = KeyringData.fresh().seal_keys[1]
        data.current = generation
        # A store older than 192-bit seal nonces moves to them here: the operator rotates
        # once every server runs a release that opens them (docs/security.md).
        data.wide_from = data.wide_from or generation
        data.revision += 1
        repo.set_meta(WRAP_PREFIX + fingerprint(old), data.wrap(old))
        repo.set_meta(WRAP_PREFIX + fingerprint(new), data.wrap(new))
        repo.set_meta(REVISION, str(data.revision).encode())
        report.generation = generation
        audit(repo, "keyring.generation.add", report)
        return Keyring(data)

    keyring = await store.write(add_generation)
    await asyncio.sleep(settle_seconds)
    for kind in SealedKind:
        cursor: SealedValue | None = None
        while True:
            done, cursor = await store.write(_page(keyring.sealer, kind, cursor))
            report.resealed += done
            progress(kind.value, report.resealed)
            if cursor is None:
                break

    def retire(repo: Repository) -> None:
        for kind in SealedKind:
            cursor: SealedValue | None = None
            while True:
                _, cursor = _reseal(repo, keyring.sealer, kind, cursor, 10_000)
                if cursor is None:
                    break
        for name in repo.meta_names(WRAP_PREFIX):
            if name != WRAP_PREFIX + fingerprint(new):
                repo.delete_meta(name)
        audit(repo, "keyring.rotate", report)

    await store.write(retire)
    return report


def _page(
    sealer: Sealer, kind: SealedKind, after: SealedValue | None
) -> Callable[[Repository], tuple[int, SealedValue | None]]:
    return lambda repo: _reseal(repo, sealer, kind, after, BATCH)


def _reseal(
    repo: SealedValues, sealer: Sealer, kind: SealedKind, after: SealedValue | None, limit: int
) -> tuple[int, SealedValue | None]:
    """Re-seal one page of ``kind``; (values re-sealed, cursor of the next page or None)."""
    values = repo.sealed_after(kind, after, limit)
    done = 0
    for value in values:
        if Sealer.generation_of(value.blob) == sealer.current:
            continue
        bound = _bound_to(value)
        repo.replace_sealed(value, sealer.seal(sealer.open(value.blob, bound), bound))
        done += 1
    return done, (values[-1] if len(values) == limit else None)
