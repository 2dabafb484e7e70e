"""The one table from domain errors to gRPC status codes, with rich error details
(google.rpc.ErrorInfo, BadRequest, RetryInfo): in grpc-status-details-bin over gRPC, and
as the google.rpc.Status that the HTTP transcoder renders as JSON."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from keyturn_server.domain import errors, limits

DOMAIN = "keyturn.dev"

STATUS_OF: dict[type[errors.KeyturnError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def code_of(error: errors.KeyturnError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: errors.KeyturnError, detailed: bool = False) -> grpc.Status:
    return rpc_status.to_status(status_of(error, detailed))


def internal_status(ref: str) -> status_pb2.Status:
    """An unexpected failure: a reference to the logged traceback, nothing else."""
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error (reference {ref})")


#: The most bytes of a serialized status. gRPC sends it twice in the trailers (the
#: message as grpc-message, the whole status base64-encoded as grpc-status-details-bin),
#: and a client refuses trailers past 8 KiB at random and past 16 KiB always: a status
#: beyond that reached the caller as RESOURCE_EXHAUSTED "Stream removed" instead of
#: what went wrong (an UpdateConfig with hundreds of mistakes, or echoing a long value).
STATUS_BUDGET = 3500
#: The most UTF-8 bytes of a status message (percent-encoded in grpc-message: up to 3x).
MESSAGE_BUDGET = 1000
#: The most characters of a violation's field, of its description, of a metadata value.
TEXT_LIMIT = 256


def status_of(error: errors.KeyturnError, detailed: bool = False) -> status_pb2.Status:
    """The google.rpc.Status of ``error``, with its details, within STATUS_BUDGET: the
    message and every text clipped, and the violations that do not fit left out (the
    message already says how many there are). ``detailed``: the caller may read
    diagnostics, and the message carries the error's ``detail`` too."""
    code = code_of(error)
    message = error.message
    if detailed and error.detail:
        message = f"{message} (for operators: {error.detail})"
    metadata = {k: limits.clip(v, TEXT_LIMIT) for k, v in error.metadata.items()}
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))
    ]
    if isinstance(error, errors.ResourceExhausted) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=_clipped(message), details=details
    )
    if isinstance(error, errors.InvalidArgument) and error.violations:
        # The Any that carries it takes its type URL and tags too.
        room = STATUS_BUDGET - status.ByteSize() - _ANY_OVERHEAD
        request = error_details_pb2.BadRequest()
        for v in error.violations:
            violation = request.field_violations.add(
                field=limits.clip(v.field, TEXT_LIMIT),
                description=limits.clip(v.description, TEXT_LIMIT),
            )
            if request.ByteSize() > room:
                request.field_violations.remove(violation)
                break
        if request.field_violations:
            status.details.append(_pack(request))
    return status


_ANY_OVERHEAD = _pack(error_details_pb2.BadRequest()).ByteSize() + 8


def _clipped(message: str) -> str:
    encoded = message.encode()
    if len(encoded) <= MESSAGE_BUDGET:
        return message
    return encoded[:MESSAGE_BUDGET].decode(errors="ignore") + "…"
