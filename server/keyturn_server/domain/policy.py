"""Security policies: the six of the specification, plus which anomalies revoke."""

from __future__ import annotations

from dataclasses import dataclass, field

from keyturn_server.domain.anomalies import AnomalyKind


@dataclass(frozen=True)
class SecurityPolicies:
    prevent_reuse: bool = True
    enforce_rotation: bool = True
    track_usage: bool = True
    anomaly_detection: bool = True
    #: Validations per handle per minute.
    rate_limit_per_handle: int = 100
    #: Active handles per owner.
    max_concurrent_handles: int = 1000
    #: Keys per owner that are not destroyed (removed keys count until destroyed).
    max_keys_per_owner: int = 10_000
    #: Refusals per presenter (principal and peer) per minute before its presentations
    #: are answered like unknown tokens without a lookup (see domain/presenters.py).
    refused_per_presenter: int = 60
    #: Anomaly kinds that revoke the handle instead of only flagging it.
    revoke_on: frozenset[AnomalyKind] = field(
        default_factory=lambda: frozenset({AnomalyKind.TOKEN_REUSE})
    )

    def revokes(self, kind: AnomalyKind) -> bool:
        # Reuse of a superseded secret revokes whenever prevent_reuse is on: that is
        # the refresh-token rule, independent of the general anomaly switch.
        if kind is AnomalyKind.TOKEN_REUSE and self.prevent_reuse:
            return True
        return self.anomaly_detection and kind in self.revoke_on


POLICY_FIELDS = (
    "prevent_reuse",
    "enforce_rotation",
    "track_usage",
    "anomaly_detection",
    "rate_limit_per_handle",
    "max_concurrent_handles",
    "max_keys_per_owner",
    "refused_per_presenter",
    "revoke_on",
)
