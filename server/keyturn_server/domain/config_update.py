"""Changing the configuration: an UpdateConfig draft applied under an AIP-134 update
mask, and every rule the result must pass (type names, algorithms and lengths that fit,
warning < rotation <= max lifetime, positive limits) before it is stored."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from keyturn_server.crypto.algorithms import HANDLE_ALGORITHMS, KEY_ALGORITHMS
from keyturn_server.domain.anomalies import AnomalyKind
from keyturn_server.domain.config import (
    BUILTIN_HANDLE_TYPES,
    BUILTIN_KEY_TYPES,
    MAX_DURATION,
    MAX_TYPES,
    MAX_USAGE_LIMIT,
    MIN_DURATION,
    TYPE_NAME,
    Config,
    HandleType,
    KeyType,
)
from keyturn_server.domain.errors import FieldViolation, InvalidArgument
from keyturn_server.domain.limits import clip, quote
from keyturn_server.domain.policy import POLICY_FIELDS, SecurityPolicies
from keyturn_server.domain.tokens import ACCESS_TOKEN_TYPE


@dataclass
class ConfigDraft:
    """What an UpdateConfig request proposes: the api layer fills it from the proto,
    marking which policy fields were present (``revoke_on`` only when non-empty or named
    by its own path, so that ``security_policies`` leaves an empty one alone)."""

    key_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    handle_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)


def apply_update(current: Config, draft: ConfigDraft, mask: list[str]) -> Config:
    """Apply ``draft`` to ``current`` under an AIP-134 update mask and validate the result.

    Paths: ``key_types`` / ``handle_types`` replace the whole map (built-ins must stay),
    ``key_types.NAME`` sets or, when absent from the draft, deletes one type (NAME must
    be a type name: a path into one entry is refused, as AIP-134 has no such paths),
    ``security_policies`` sets every policy given, ``security_policies.FIELD`` one
    policy (and empties ``revoke_on`` only by that path). An empty mask means every part
    the draft fills in.
    """
    violations: list[FieldViolation] = []
    paths = list(mask) or _implied_paths(draft)
    if not paths:
        raise InvalidArgument("nothing to update", field="update_mask")
    key_types = dict(current.key_types)
    handle_types = dict(current.handle_types)
    policy_values: dict[str, Any] = {}

    for path in paths:
        head, dot, rest = path.partition(".")
        if head == "key_types":
            _apply_types(path, draft.key_types, key_types, BUILTIN_KEY_TYPES, violations)
        elif head == "handle_types":
            _apply_types(path, draft.handle_types, handle_types, BUILTIN_HANDLE_TYPES, violations)
        elif head == "security_policies":
            if dot and rest not in POLICY_FIELDS:
                violations.append(FieldViolation("update_mask", f"unknown path {quote(path)}"))
            elif rest:
                if rest not in draft.policies:
                    violations.append(
                        FieldViolation(f"config.{clip(path)}", "named in update_mask but not set")
                    )
                else:
                    policy_values[rest] = draft.policies[rest]
            else:
                policy_values.update(draft.policies)
        else:
            violations.append(FieldViolation("update_mask", f"unknown path {quote(path)}"))
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
    proposed: dict[str, dict[str, Any]],
    target: dict[str, Any],
    builtins: Mapping[str, object],
    violations: list[FieldViolation],
) -> None:
    field_base, dot, name = path.partition(".")
    if not dot:
        for builtin in builtins:
            if builtin not in proposed:
                violations.append(
                    FieldViolation(f"config.{field_base}", f"built-in type {builtin!r} is required")
                )
        target.clear()
        target.update(proposed)
        return
    if not TYPE_NAME.fullmatch(name):
        # Refused here, not skipped: such a path used to be accepted and change nothing
        # ("key_types.encryption.rotation_interval"), or, as "key_types.", replace the map.
        if name in proposed:  # first: the compat route's callers never see a mask
            _check_name(f"config.{field_base}.{clip(name, 32)}", name, violations)
        violations.append(FieldViolation("update_mask", _unknown_type_path(path, name)))
        return
    if name in proposed:
        target[name] = proposed[name]
    elif name in builtins:
        violations.append(
            FieldViolation(f"config.{clip(path)}", f"built-in type {name!r} cannot be deleted")
        )
    else:
        target.pop(name, None)


def _unknown_type_path(path: str, name: str) -> str:
    entry = path.partition(".")[0] + ".NAME"
    if "." in name:
        # AIP-134 masks name map entries whole; a path into one entry has no meaning here.
        return (
            f"unknown path {quote(path)}: paths inside one map entry are not supported "
            f"(AIP-134); name the whole entry, {entry}, and send all of its fields"
        )
    return f"unknown path {quote(path)}: {entry} takes a type name, {_NAME_RULE}"


_NAME_RULE = "1-32 of a-z, 0-9 and '-', starting with a letter"


def _check_name(prefix: str, name: str, violations: list[FieldViolation]) -> None:
    if not TYPE_NAME.fullmatch(name):
        violations.append(FieldViolation(prefix, f"type names are {_NAME_RULE}"))


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
    prefix = f"config.key_types.{clip(name, 32)}"
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
    prefix = f"config.handle_types.{clip(name, 32)}"
    _check_name(prefix, name, violations)
    if name == ACCESS_TOKEN_TYPE:
        # A token's prefix says what it is; this one is the API's access tokens'.
        violations.append(
            FieldViolation(prefix, f"{name!r} is the type of access tokens; choose another name")
        )
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


_COUNTS = (
    "rate_limit_per_handle",
    "max_concurrent_handles",
    "max_keys_per_owner",
    "refused_per_presenter",
)


def _policies(
    current: SecurityPolicies, values: dict[str, Any], violations: list[FieldViolation]
) -> SecurityPolicies:
    changes: dict[str, Any] = {}
    for name, value in values.items():
        where = f"config.security_policies.{clip(name, 32)}"
        if name in _COUNTS:
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
