"""The stored configuration: one row per revision."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class StoredConfig:
    #: The configuration as JSON (domain.config.config_to_json).
    body: dict[str, Any]
    revision: int
    update_time: datetime
    updated_by: str


class ConfigRepository(Protocol):
    def latest_config(self) -> StoredConfig | None: ...

    def config_revision(self) -> int:
        """The newest revision's number (0 when none is stored): one indexed read, so that
        a replica can tell whether another one changed the configuration."""
        ...

    def put_config(self, config: StoredConfig) -> bool:
        """Store a new revision; False (and nothing changed) when that revision exists
        already: another writer got there first."""
        ...
