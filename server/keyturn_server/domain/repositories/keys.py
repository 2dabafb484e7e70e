"""Keys with their versions and sealed material."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from keyturn_server.domain.keys import Key, KeyStatus, KeyVersion
from keyturn_server.domain.paging import Cursor, Listing


class KeyRepository(Protocol):
    def get_key(self, key_id: str, for_update: bool = False) -> Key | None:
        """The key with every version; ``for_update``: the unit of work goes on to
        change it (locked where writers run concurrently)."""
        ...

    def lock_keys(self, key_ids: Sequence[str]) -> None:
        """Lock these keys' rows in id order, where writers run concurrently (see
        :meth:`HandleRepository.lock_handles`)."""
        ...

    def insert_key(self, key: Key) -> None: ...

    def update_key(self, key: Key) -> None: ...

    def insert_version(self, version: KeyVersion, sealed_material: bytes) -> None: ...

    def update_version(self, version: KeyVersion) -> None: ...

    def destroy_material(self, key_id: str, version: int) -> None: ...

    def sealed_material(self, key_id: str, version: int) -> bytes | None: ...

    def reserve_nonces(self, key_id: str, version: int, count: int, limit: int) -> int | None:
        """Add ``count`` to the encryptions reserved for a version, durably; the total
        after it, or None (and nothing reserved) when it would pass ``limit``."""
        ...

    def add_key_usage(self, usage: Mapping[str, tuple[int, datetime]]) -> None:
        """Add uses (count, last use) to keys' usage counts."""
        ...

    def list_keys(
        self,
        now: datetime,
        type_name: str,
        status: KeyStatus | None,
        owner: str,
        after: Cursor | None,
        limit: int,
        total: int | None = None,
    ) -> Listing[Key]:
        """One page; the total across pages is counted unless ``total`` is given."""
        ...

    def count_keys(self, owner: str) -> int:
        """Keys of ``owner`` that are not destroyed."""
        ...

    def claim_key_slot(self, owner: str, cap: int) -> bool:
        """Count a new key of ``owner`` unless it holds ``cap`` keys already (False: nothing
        counted). Atomic against concurrent units of work."""
        ...

    def release_key_slot(self, owner: str) -> None:
        """A key of ``owner`` was destroyed."""
        ...

    def key_counts(self, now: datetime) -> list[tuple[str, str, int, int, int]]:
        """(type, status, count, usage, versions) per type and status."""
        ...

    def active_key_deadlines(self) -> list[tuple[str, str, int, int | None]]:
        """(id, type, expire time, next rotation time) of active keys, in microseconds."""
        ...

    def keys_overdue(self, now: datetime) -> int:
        """Active keys past their rotation time."""
        ...

    def keys_in_warning(
        self, now: datetime, limit: int, after: tuple[int, str] | None, owner: str = ""
    ) -> list[Key]:
        """Active keys inside their warning window, by (warn time in microseconds, id)
        after a cursor; only ``owner``'s when given (read by the store)."""
        ...
