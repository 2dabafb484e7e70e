"""Configuration between its proto form and the domain's."""

from __future__ import annotations

from typing import Any

from keyturn.v1 import admin_pb2
from keyturn_server.api.convert import ANOMALY_KIND, ANOMALY_KIND_FROM, dur, from_duration, ts
from keyturn_server.domain import limits
from keyturn_server.domain.config import Config
from keyturn_server.domain.config_update import ConfigDraft
from keyturn_server.domain.errors import InvalidArgument

_POLICY_SCALARS = (
    "prevent_reuse",
    "enforce_rotation",
    "track_usage",
    "anomaly_detection",
    "rate_limit_per_handle",
    "max_concurrent_handles",
    "max_keys_per_owner",
    "refused_per_presenter",
)
_REVOKE_ON = "security_policies.revoke_on"


def config_message(config: Config) -> admin_pb2.Config:
    message = admin_pb2.Config(
        etag=config.etag,
        revision=config.revision,
        update_time=ts(config.update_time),
        updated_by=config.updated_by,
    )
    for name, k in config.key_types.items():
        message.key_types[name].CopyFrom(
            admin_pb2.KeyTypeConfig(
                algorithm=k.algorithm,
                key_length=k.key_length,
                rotation_interval=dur(k.rotation_interval),
                warning_threshold=dur(k.warning_threshold),
                max_lifetime=dur(k.max_lifetime),
                exportable=k.exportable,
            )
        )
    for name, h in config.handle_types.items():
        entry = admin_pb2.HandleTypeConfig(
            algorithm=h.algorithm,
            handle_length=h.handle_length,
            rotation_interval=dur(h.rotation_interval),
            warning_threshold=dur(h.warning_threshold),
            max_lifetime=dur(h.max_lifetime),
            max_usage=h.max_usage,
        )
        if h.grace_period is not None:
            entry.grace_period.CopyFrom(dur(h.grace_period))
        message.handle_types[name].CopyFrom(entry)
    p = config.policies
    message.security_policies.CopyFrom(
        admin_pb2.SecurityPolicies(
            prevent_reuse=p.prevent_reuse,
            enforce_rotation=p.enforce_rotation,
            track_usage=p.track_usage,
            anomaly_detection=p.anomaly_detection,
            rate_limit_per_handle=p.rate_limit_per_handle,
            max_concurrent_handles=p.max_concurrent_handles,
            max_keys_per_owner=p.max_keys_per_owner,
            refused_per_presenter=p.refused_per_presenter,
            revoke_on=sorted(ANOMALY_KIND[k] for k in p.revoke_on),
        )
    )
    return message


def _durations(message: Any, names: tuple[str, ...], into: dict[str, Any], where: str) -> None:
    for name in names:
        if message.HasField(name):
            into[name] = from_duration(getattr(message, name), f"{where}.{name}")


def draft_from(config: admin_pb2.Config, mask: list[str]) -> ConfigDraft:
    draft = ConfigDraft()
    for name, k in config.key_types.items():
        entry: dict[str, Any] = {"algorithm": k.algorithm, "key_length": k.key_length}
        _durations(
            k,
            ("rotation_interval", "warning_threshold", "max_lifetime"),
            entry,
            f"config.key_types.{limits.clip(name, 32)}",
        )
        if k.HasField("exportable"):
            entry["exportable"] = k.exportable
        draft.key_types[name] = entry
    for name, h in config.handle_types.items():
        entry = {
            "algorithm": h.algorithm,
            "handle_length": h.handle_length,
            "max_usage": h.max_usage,
        }
        _durations(
            h,
            ("rotation_interval", "warning_threshold", "max_lifetime", "grace_period"),
            entry,
            f"config.handle_types.{limits.clip(name, 32)}",
        )
        draft.handle_types[name] = entry
    policies = config.security_policies
    if config.HasField("security_policies"):
        for name in _POLICY_SCALARS:
            if policies.HasField(name):  # type: ignore[arg-type]
                draft.policies[name] = getattr(policies, name)
        # A repeated field has no presence: an empty revoke_on is "not given", like an
        # unset scalar policy, unless its own path is named, the one way to empty it.
        # Taken as given under "security_policies", it turned off revoke-on-reuse unasked.
        if policies.revoke_on or _REVOKE_ON in mask:
            unknown = [v for v in policies.revoke_on if v not in ANOMALY_KIND_FROM]
            if unknown:
                raise InvalidArgument(
                    f"unknown anomaly kind {unknown[0]}", field=f"config.{_REVOKE_ON}"
                )
            draft.policies["revoke_on"] = [ANOMALY_KIND_FROM[v].value for v in policies.revoke_on]
    return draft
