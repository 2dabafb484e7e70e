"""Errors raised by the client: one class per gRPC status code, each carrying the
``google.rpc`` details the server sent in ``grpc-status-details-bin``.

::

    KeyturnError                 any failed call: .code .message .reason .domain .metadata
    ├── InvalidArgument          bad input; .field_violations (google.rpc.BadRequest)
    ├── NotFound
    ├── AlreadyExists
    ├── FailedPrecondition       the key or handle is in the wrong state
    ├── Aborted                  a stale etag; a watch that fell behind (WATCH_OVERFLOW)
    ├── OutOfRange               a watch resume point older than the event retention
    ├── ResourceExhausted        rate limits and quotas; .retry_after (google.rpc.RetryInfo)
    ├── Unauthenticated          no token, or an unknown, expired or revoked one
    ├── PermissionDenied         the token's role may not do this
    ├── DataLoss                 stored ciphertext failed authentication on the server
    ├── Unavailable              the server cannot be reached (reads are retried first)
    ├── DeadlineExceeded
    ├── Cancelled
    └── ServerError              INTERNAL, UNKNOWN, UNIMPLEMENTED and anything else

Catch ``KeyturnError`` for everything, or a subclass for one outcome::

    try:
        key = await client.get_key(key_id)
    except keyturn.NotFound as exc:
        print(exc.reason)  # "KEY_NOT_FOUND"
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One entry of google.rpc.BadRequest: which request field is wrong, and why."""

    field: str
    description: str


class KeyturnError(Exception):
    """A call that ended with a status other than OK."""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        #: google.rpc.ErrorInfo reason, e.g. "KEY_NOT_FOUND"; "" when the server sent none.
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})

    def __str__(self) -> str:
        named = self.reason and self.reason != self.code.name
        label = f"{self.code.name} ({self.reason})" if named else self.code.name
        return f"{label}: {self.message}"


class InvalidArgument(KeyturnError):
    #: Which request fields are wrong (google.rpc.BadRequest), in the server's order.
    field_violations: tuple[FieldViolation, ...] = ()


class NotFound(KeyturnError):
    pass


class AlreadyExists(KeyturnError):
    pass


class FailedPrecondition(KeyturnError):
    pass


class Aborted(KeyturnError):
    pass


class OutOfRange(KeyturnError):
    pass


class ResourceExhausted(KeyturnError):
    #: How long the server asks the caller to wait (google.rpc.RetryInfo), if it said.
    retry_after: timedelta | None = None


class Unauthenticated(KeyturnError):
    pass


class PermissionDenied(KeyturnError):
    pass


class DataLoss(KeyturnError):
    pass


class Unavailable(KeyturnError):
    pass


class DeadlineExceeded(KeyturnError):
    pass


class Cancelled(KeyturnError):
    pass


class ServerError(KeyturnError):
    pass


ERROR_FOR_CODE: dict[grpc.StatusCode, type[KeyturnError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    try:
        found: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # details inconsistent with the status: ignore them
        return None
    return found


def from_rpc_error(error: grpc.aio.AioRpcError) -> KeyturnError:
    """The client error for a failed call, with ErrorInfo, BadRequest and RetryInfo
    unpacked from the status details."""
    code = error.code()
    reason, domain, metadata = "", "", {}
    violations: tuple[FieldViolation, ...] = ()
    retry_after: timedelta | None = None
    status = _rich_status(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = tuple(FieldViolation(v.field, v.description) for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta()
    cls = ERROR_FOR_CODE.get(code, ServerError)
    failure = cls(
        error.details() or code.name, code=code, reason=reason, domain=domain, metadata=metadata
    )
    if isinstance(failure, InvalidArgument):
        failure.field_violations = violations
    elif isinstance(failure, ResourceExhausted):
        failure.retry_after = retry_after
    return failure
