"""Key types, handle types and policies: the defaults of the specification, and the
rules every configuration change must pass before it is stored."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keyturn_server.crypto.algorithms import HANDLE_ALGORITHMS, KEY_ALGORITHMS
from keyturn_server.domain.anomalies import AnomalyKind
from keyturn_server.domain.errors import FieldViolation, InvalidArgument
from keyturn_server.domain.policy import POLICY_FIELDS, SecurityPolicies

TYPE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
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


@dataclass
class ConfigDraft:
    """What an UpdateConfig request proposes: the api layer fills it from the proto,
    marking which policy fields were present."""

    key_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    handle_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)


def apply_update(current: Config, draft: ConfigDraft, mask: list[str]) -> Config:
    """Apply ``draft`` to ``current`` under an AIP-134 update mask and validate the result.

    Paths: ``key_types`` / ``handle_types`` replace the whole map (built-ins must stay),
    ``key_types.NAME`` sets or, when absent from the draft, deletes one type,
    ``security_policies`` sets every policy given, ``security_policies.FIELD`` one
    policy. An empty mask means every part the draft fills in.
    """
    violations: list[FieldViolation] = []
    paths = list(mask) or _implied_paths(draft)
    if not paths:
        raise InvalidArgument("nothing to update", field="update_mask")
    key_types = dict(current.key_types)
    handle_types = dict(current.handle_types)
    policy_values: dict[str, Any] = {}

    for path in paths:
        head, _, rest = path.partition(".")
        if head == "key_types":
            _apply_types(path, rest, draft.key_types, key_types, BUILTIN_KEY_TYPES, violations)
        elif head == "handle_types":
            _apply_types(
                path, rest, draft.handle_types, handle_types, BUILTIN_HANDLE_TYPES, violations
            )
        elif head == "security_policies":
            if rest and rest not in POLICY_FIELDS:
                violations.append(FieldViolation("update_mask", f"unknown path {path!r}"))
            elif rest:
                if rest not in draft.policies:
                    violations.append(
                        FieldViolation(f"config.{path}", "named in update_mask but not set")
                    )
                else:
                    policy_values[rest] = draft.policies[rest]
            else:
                policy_values.update(draft.policies)
        else:
            violations.append(FieldViolation("update_mask", f"unknown path {path!r}"))
    if violations:
        raise InvalidArgument.of(violations)

    parsed_keys = {n: _key_type(n, v, violations) for n, v in key_types.items()}
    parsed_handles = {n: _handle_type(n, v, violations) for n, v in handle_types.items()}
    policies = _policies(current.policies, policy_values, violations)
    if len(parsed_keys) > MAX_TYPES or len(parsed_handles) > MAX_TYPES:
        violations.append(FieldViolation("config", f"at most {MAX_TYPES} types of each kind"))
    if violations:
        raise InvalidArgument.of(violations)
    return Config(
        key_types={n: t for n, t in parsed_keys.items() if t is not None},
        handle_types={n: t for n, t in parsed_handles.items() if t is not None},
        policies=policies,
        revision=current.revision,
    )


def _implied_paths(draft: ConfigDraft) -> list[str]:
    paths = [f"key_types.{n}" for n in draft.key_types]
    paths += [f"handle_types.{n}" for n in draft.handle_types]
    if draft.policies:
        paths.append("security_policies")
    return paths


def _apply_types(
    path: str,
    name: str,
    proposed: dict[str, dict[str, Any]],
    target: dict[str, Any],
    builtins: Mapping[str, object],
    violations: list[FieldViolation],
) -> None:
    field_base = path.partition(".")[0]
    if not name:
        for builtin in builtins:
            if builtin not in proposed:
                violations.append(
                    FieldViolation(f"config.{field_base}", f"built-in type {builtin!r} is required")
                )
        target.clear()
        target.update(proposed)
        return
    if name in proposed:
        target[name] = proposed[name]
    elif name in builtins:
        violations.append(
            FieldViolation(f"config.{path}", f"built-in type {name!r} cannot be deleted")
        )
    else:
        target.pop(name, None)


def _check_name(prefix: str, name: str, violations: list[FieldViolation]) -> None:
    if not TYPE_NAME.match(name):
        violations.append(
            FieldViolation(
                prefix, "type names are 1-32 of a-z, 0-9 and '-', starting with a letter"
            )
        )


def _duration(
    prefix: str, raw: dict[str, Any], name: str, violations: list[FieldViolation]
) -> timedelta | None:
    value = raw.get(name)
    if value is None:
        violations.append(FieldViolation(f"{prefix}.{name}", "required"))
        return None
    if not isinstance(value, timedelta):
        violations.append(FieldViolation(f"{prefix}.{name}", "must be a duration"))
        return None
    if not MIN_DURATION <= value <= MAX_DURATION:
        violations.append(
            FieldViolation(f"{prefix}.{name}", "must be between 1 second and 3650 days")
        )
        return None
    return value


def _check_windows(
    prefix: str,
    rotation: timedelta | None,
    warning: timedelta | None,
    lifetime: timedelta | None,
    violations: list[FieldViolation],
) -> bool:
    if rotation is None or warning is None or lifetime is None:
        return False
    ok = True
    if warning >= rotation:
        violations.append(
            FieldViolation(f"{prefix}.warning_threshold", "must be shorter than rotation_interval")
        )
        ok = False
    if rotation > lifetime:
        violations.append(
            FieldViolation(f"{prefix}.rotation_interval", "must not exceed max_lifetime")
        )
        ok = False
    return ok


def _int(
    prefix: str, raw: dict[str, Any], name: str, violations: list[FieldViolation]
) -> int | None:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        violations.append(FieldViolation(f"{prefix}.{name}", "required, a positive integer"))
        return None
    return value


def _key_type(name: str, raw: Any, violations: list[FieldViolation]) -> KeyType | None:
    if isinstance(raw, KeyType):
        return raw
    prefix = f"config.key_types.{name}"
    _check_name(prefix, name, violations)
    before = len(violations)
    algorithm = KEY_ALGORITHMS.get(str(raw.get("algorithm", "")))
    if algorithm is None:
        violations.append(
            FieldViolation(
                f"{prefix}.algorithm", "unknown; one of " + ", ".join(sorted(KEY_ALGORITHMS))
            )
        )
    length = _int(prefix, raw, "key_length", violations)
    if algorithm is not None and length is not None and not algorithm.fits(length):
        violations.append(
            FieldViolation(
                f"{prefix}.key_length",
                f"{algorithm.name} takes {algorithm.describe_lengths()}",
            )
        )
    rotation = _duration(prefix, raw, "rotation_interval", violations)
    warning = _duration(prefix, raw, "warning_threshold", violations)
    lifetime = _duration(prefix, raw, "max_lifetime", violations)
    _check_windows(prefix, rotation, warning, lifetime, violations)
    exportable = raw.get("exportable")
    if exportable is not None and not isinstance(exportable, bool):
        violations.append(FieldViolation(f"{prefix}.exportable", "must be a boolean"))
    if len(violations) > before:
        return None
    assert algorithm is not None and length is not None
    assert rotation is not None and warning is not None and lifetime is not None
    if exportable is None:
        exportable = algorithm.exportable_by_default
    return KeyType(algorithm.name, length, rotation, warning, lifetime, exportable)


def _handle_type(name: str, raw: Any, violations: list[FieldViolation]) -> HandleType | None:
    if isinstance(raw, HandleType):
        return raw
    prefix = f"config.handle_types.{name}"
    _check_name(prefix, name, violations)
    before = len(violations)
    algorithm = HANDLE_ALGORITHMS.get(str(raw.get("algorithm", "")))
    if algorithm is None:
        violations.append(
            FieldViolation(
                f"{prefix}.algorithm", "unknown; one of " + ", ".join(sorted(HANDLE_ALGORITHMS))
            )
        )
    length = _int(prefix, raw, "handle_length", violations)
    if (
        algorithm is not None
        and length is not None
        and not algorithm.min_length <= length <= algorithm.max_length
    ):
        violations.append(
            FieldViolation(
                f"{prefix}.handle_length",
                f"{algorithm.min_length} to {algorithm.max_length} bytes",
            )
        )
    rotation = _duration(prefix, raw, "rotation_interval", violations)
    warning = _duration(prefix, raw, "warning_threshold", violations)
    lifetime = _duration(prefix, raw, "max_lifetime", violations)
    _check_windows(prefix, rotation, warning, lifetime, violations)
    max_usage = _int(prefix, raw, "max_usage", violations)
    if max_usage is not None and not 1 <= max_usage <= MAX_USAGE_LIMIT:
        violations.append(
            FieldViolation(f"{prefix}.max_usage", f"must be between 1 and {MAX_USAGE_LIMIT}")
        )
    grace = raw.get("grace_period")
    if grace is not None:
        grace = _duration(prefix, raw, "grace_period", violations)
        if grace is not None and lifetime is not None and grace > lifetime:
            violations.append(
                FieldViolation(f"{prefix}.grace_period", "must not exceed max_lifetime")
            )
    if len(violations) > before:
        return None
    assert algorithm is not None and length is not None and max_usage is not None
    assert rotation is not None and warning is not None and lifetime is not None
    return HandleType(algorithm.name, length, rotation, warning, lifetime, max_usage, grace)


def _policies(
    current: SecurityPolicies, values: dict[str, Any], violations: list[FieldViolation]
) -> SecurityPolicies:
    changes: dict[str, Any] = {}
    for name, value in values.items():
        where = f"config.security_policies.{name}"
        if name in ("rate_limit_per_handle", "max_concurrent_handles"):
            if isinstance(value, bool) or not isinstance(value, int):
                violations.append(FieldViolation(where, "must be an integer"))
            elif not 1 <= value <= 10_000_000:
                violations.append(FieldViolation(where, "must be between 1 and 10000000"))
            else:
                changes[name] = value
        elif name == "revoke_on":
            try:
                changes[name] = frozenset(AnomalyKind(v) for v in value)
            except (TypeError, ValueError):
                violations.append(FieldViolation(where, "unknown anomaly kind"))
        elif not isinstance(value, bool):
            violations.append(FieldViolation(where, "must be a boolean"))
        else:
            changes[name] = value
    return dataclasses.replace(current, **changes)


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
        revoke_on=frozenset(AnomalyKind(k) for k in p["revoke_on"]),
    )
    return Config(keys, handles, policies, revision, update_time, updated_by)
