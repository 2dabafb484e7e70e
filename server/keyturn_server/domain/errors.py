"""The domain's error hierarchy.

::

    KeyturnError
    ├── InvalidArgument        bad input; carries field violations
    ├── NotFound
    ├── AlreadyExists
    ├── FailedPrecondition     the resource is in the wrong state
    ├── Aborted                optimistic concurrency (etag) lost
    ├── ResourceExhausted      rate limits and quotas; may carry retry_after
    ├── Unauthenticated
    ├── PermissionDenied
    ├── OutOfRange             a resume point older than the event retention
    ├── DataLoss               stored ciphertext failed authentication
    └── Unavailable            the store cannot take writes right now

``api/status.py`` maps each class to one gRPC status code; nothing else does. Messages
are shown to callers, so they never contain key material, tokens or the master key, nor
what the service is made of: the database's own words (its host, port, user, file
paths, SQL) go in ``detail``, which only callers that may read diagnostics see.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class KeyturnError(Exception):
    """Base of every error the service reports to callers on purpose."""

    #: Machine-readable reason (google.rpc.ErrorInfo.reason), UPPER_SNAKE_CASE.
    default_reason = "KEYTURN_ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        #: What went wrong inside (a database's error text), for operators only: the
        #: message says what it means to the caller.
        self.detail = detail


class InvalidArgument(KeyturnError):
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        violations: list[FieldViolation] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        found = list(violations or [])
        if field is not None:
            found.insert(0, FieldViolation(field, message))
        self.violations = found

    @classmethod
    def of(cls, violations: list[FieldViolation]) -> InvalidArgument:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        return cls(f"{first.field}: {first.description}{more}", violations=violations)


class NotFound(KeyturnError):
    default_reason = "NOT_FOUND"


class AlreadyExists(KeyturnError):
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(KeyturnError):
    default_reason = "FAILED_PRECONDITION"


class Aborted(KeyturnError):
    default_reason = "ABORTED"


class ResourceExhausted(KeyturnError):
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        retry_after: timedelta | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class Unauthenticated(KeyturnError):
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(KeyturnError):
    default_reason = "PERMISSION_DENIED"


class OutOfRange(KeyturnError):
    default_reason = "OUT_OF_RANGE"


class DataLoss(KeyturnError):
    default_reason = "DATA_LOSS"


class Unavailable(KeyturnError):
    default_reason = "UNAVAILABLE"


#: Store refusals that were one call's fate (a table locked by someone else, a statement
#: that ran too long, a row held, this call's transaction ended), not the store's state:
#: health does not change for them.
ONE_CALLS_FATE = frozenset({"STORE_LOCKED", "STORE_ROW_LOCKED", "STORE_SLOW", "STORE_STALLED"})


class Internal(KeyturnError):
    """An invariant broke; the message is generic and the detail goes to the error log."""

    default_reason = "INTERNAL"
