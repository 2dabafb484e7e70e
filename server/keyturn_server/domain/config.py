"""Key types, handle types and policies: the configuration, the defaults of the
specification, and its stored form. The rules every change must pass before it is
stored are :mod:`config_update`."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyturn_server.domain.anomalies import AnomalyKind
from keyturn_server.domain.policy import SecurityPolicies

#: Use with fullmatch: "$" also matches before a trailing newline, so "evil\n" passed.
TYPE_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
MIN_DURATION = timedelta(seconds=1)
MAX_DURATION = timedelta(days=3650)
MAX_USAGE_LIMIT = 1_000_000_000
MAX_TYPES = 64


@dataclass(frozen=True)
class KeyType:
    algorithm: str
    key_length: int
    rotation_interval: timedelta
    warning_threshold: timedelta
    max_lifetime: timedelta
    exportable: bool


@dataclass(frozen=True)
class HandleType:
    algorithm: str
    handle_length: int
    rotation_interval: timedelta
    warning_threshold: timedelta
    max_lifetime: timedelta
    max_usage: int
    #: How long a previous secret keeps validating after a rotation.
    grace_period: timedelta | None = None

    @property
    def grace(self) -> timedelta:
        return self.grace_period if self.grace_period is not None else self.warning_threshold


DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)

BUILTIN_KEY_TYPES: dict[str, KeyType] = {
    "encryption": KeyType("aes-256-gcm", 32, 30 * DAY, 7 * DAY, 90 * DAY, False),
    "signing": KeyType("rsa", 2048, 60 * DAY, 14 * DAY, 365 * DAY, False),
    "session": KeyType("sha256", 64, 24 * HOUR, 2 * HOUR, 7 * DAY, True),
    "api": KeyType("sha512", 128, 7 * DAY, 24 * HOUR, 30 * DAY, True),
}

BUILTIN_HANDLE_TYPES: dict[str, HandleType] = {
    "session": HandleType("sha256", 32, 1 * HOUR, 10 * MINUTE, 24 * HOUR, 1000),
    "workflow": HandleType("sha512", 64, 30 * MINUTE, 5 * MINUTE, 4 * HOUR, 100),
    "api": HandleType("sha256", 48, 15 * MINUTE, 2 * MINUTE, 1 * HOUR, 500),
    "device": HandleType("sha384", 56, 5 * MINUTE, 1 * MINUTE, 30 * MINUTE, 50),
}


@dataclass(frozen=True)
class Config:
    key_types: Mapping[str, KeyType]
    handle_types: Mapping[str, HandleType]
    policies: SecurityPolicies
    revision: int = 0
    update_time: datetime | None = None
    updated_by: str = ""

    @property
    def etag(self) -> str:
        digest = hashlib.sha256(json.dumps(config_to_json(self), sort_keys=True).encode())
        return f'W/"{self.revision}-{digest.hexdigest()[:16]}"'


def default_config() -> Config:
    return Config(dict(BUILTIN_KEY_TYPES), dict(BUILTIN_HANDLE_TYPES), SecurityPolicies())


# --- storage form -----------------------------------------------------------------------


def _td(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def config_to_json(config: Config) -> dict[str, Any]:
    def key(t: KeyType) -> dict[str, Any]:
        return {
            "algorithm": t.algorithm,
            "key_length": t.key_length,
            "rotation_interval": t.rotation_interval.total_seconds(),
            "warning_threshold": t.warning_threshold.total_seconds(),
            "max_lifetime": t.max_lifetime.total_seconds(),
            "exportable": t.exportable,
        }

    def handle(t: HandleType) -> dict[str, Any]:
        return {
            "algorithm": t.algorithm,
            "handle_length": t.handle_length,
            "rotation_interval": t.rotation_interval.total_seconds(),
            "warning_threshold": t.warning_threshold.total_seconds(),
            "max_lifetime": t.max_lifetime.total_seconds(),
            "max_usage": t.max_usage,
            "grace_period": None if t.grace_period is None else t.grace_period.total_seconds(),
        }

    p = config.policies
    return {
        "key_types": {n: key(t) for n, t in sorted(config.key_types.items())},
        "handle_types": {n: handle(t) for n, t in sorted(config.handle_types.items())},
        "security_policies": {
            "prevent_reuse": p.prevent_reuse,
            "enforce_rotation": p.enforce_rotation,
            "track_usage": p.track_usage,
            "anomaly_detection": p.anomaly_detection,
            "rate_limit_per_handle": p.rate_limit_per_handle,
            "max_concurrent_handles": p.max_concurrent_handles,
            "max_keys_per_owner": p.max_keys_per_owner,
            "refused_per_presenter": p.refused_per_presenter,
            "revoke_on": sorted(k.value for k in p.revoke_on),
        },
    }


def config_from_json(
    data: dict[str, Any], revision: int, update_time: datetime | None, updated_by: str
) -> Config:
    keys = {
        n: KeyType(
            v["algorithm"],
            v["key_length"],
            _td(v["rotation_interval"]),
            _td(v["warning_threshold"]),
            _td(v["max_lifetime"]),
            v["exportable"],
        )
        for n, v in data["key_types"].items()
    }
    handles = {
        n: HandleType(
            v["algorithm"],
            v["handle_length"],
            _td(v["rotation_interval"]),
            _td(v["warning_threshold"]),
            _td(v["max_lifetime"]),
            v["max_usage"],
            None if v.get("grace_period") is None else _td(v["grace_period"]),
        )
        for n, v in data["handle_types"].items()
    }
    p = data["security_policies"]
    policies = SecurityPolicies(
        prevent_reuse=p["prevent_reuse"],
        enforce_rotation=p["enforce_rotation"],
        track_usage=p["track_usage"],
        anomaly_detection=p["anomaly_detection"],
        rate_limit_per_handle=p["rate_limit_per_handle"],
        max_concurrent_handles=p["max_concurrent_handles"],
        # Added after the first stored configurations: absent there, the default.
        max_keys_per_owner=p.get("max_keys_per_owner", SecurityPolicies.max_keys_per_owner),
        refused_per_presenter=p.get(
            "refused_per_presenter", SecurityPolicies.refused_per_presenter
        ),
        revoke_on=frozenset(AnomalyKind(k) for k in p["revoke_on"]),
    )
    return Config(keys, handles, policies, revision, update_time, updated_by)
