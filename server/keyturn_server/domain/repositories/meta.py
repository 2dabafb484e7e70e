"""Small named values: the wrapped keyring and its revision, the master-key salt."""

from __future__ import annotations

from typing import Protocol


class MetaRepository(Protocol):
    def get_meta(self, name: str) -> bytes | None: ...

    def set_meta(self, name: str, value: bytes) -> None: ...

    def meta_names(self, prefix: str) -> list[str]: ...

    def delete_meta(self, name: str) -> None: ...
