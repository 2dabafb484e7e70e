"""Every value sealed under the master key, as master-key rotation walks them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol


class SealedKind(enum.Enum):
    """What a sealed value is; the values name where the store keeps them."""

    #: A key version's material, bound to (key id, version).
    KEY_MATERIAL = "key_versions"
    #: An automatically rotated successor waiting for its owner, bound to (handle id,
    #: generation of the superseded secret).
    PENDING_SUCCESSOR = "handle_secrets"
    #: A successor carried by a ROTATED event, bound to (handle id, its own generation).
    DELIVERED_TOKEN = "events"


@dataclass(frozen=True)
class SealedValue:
    kind: SealedKind
    #: The key or handle the value belongs to.
    record_id: str
    #: The key version, or the generation of the handle secret, the seal is bound to.
    number: int
    blob: bytes
    #: Where the store keeps it (opaque): to replace it, and to page on after it.
    position: tuple[Any, ...]


class SealedValues(Protocol):
    def sealed_after(
        self, kind: SealedKind, after: SealedValue | None, limit: int
    ) -> list[SealedValue]:
        """Values of ``kind``, in the store's order, after ``after``."""
        ...

    def replace_sealed(self, value: SealedValue, blob: bytes) -> None: ...
