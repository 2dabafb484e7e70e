"""Small named values (the wrapped keyring and its revision, the master-key salt), and
the one-time protection of rows written before row MACs."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class MetaRepository(Protocol):
    def get_meta(self, name: str) -> bytes | None: ...

    def set_meta(self, name: str, value: bytes) -> None: ...

    def claim_meta(self, name: str, value: bytes) -> bool:
        """Set ``name`` only if it is not set; False when it was (by another writer,
        perhaps one committing at this moment: its value is visible once this returns)."""
        ...

    def lock_meta(self, name: str) -> bool:
        """Lock ``name``'s row until this transaction ends, without waiting: False when
        another writer holds it (a replica doing the same work: wait and try again)."""
        ...

    def meta_names(self, prefix: str) -> list[str]: ...

    def delete_meta(self, name: str) -> None: ...

    def clock_floor(self) -> datetime | None:
        """The latest time a server of this store reached, if it is there and authentic
        (a forged one is reported and ignored)."""
        ...

    def raise_clock_floor(self, now: datetime) -> None:
        """Make ``now`` the floor, unless the floor is later already."""
        ...


class RowProtection(Protocol):
    def tag_rows(self, after: str, limit: int) -> tuple[int, str]:
        """Give up to about ``limit`` rows that grant rights their MAC as they stand (on
        the first start of a data directory made before row MACs), going on from
        ``after`` ("": the start); how many, and where to go on from ("": done)."""
        ...
