"""The client policy of clients/README.md as rules: which methods may be retried (from
the ``idempotency_level`` of the generated descriptors), which failures are retried, which
end a watch, how long RetryInfo asks to wait, and which addresses are loopback."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import grpc
from google.protobuf import descriptor, descriptor_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2

Level = descriptor_pb2.MethodOptions.IdempotencyLevel

#: The services of the three API files, in the order the client exposes them.
SERVICES: tuple[descriptor.ServiceDescriptor, ...] = (
    keys_pb2.DESCRIPTOR.services_by_name["KeyService"],
    handles_pb2.DESCRIPTOR.services_by_name["HandleService"],
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
)

#: Levels whose calls may be sent again: a repeat changes nothing (NO_SIDE_EFFECTS) or
#: gives an equally valid answer (IDEMPOTENT).
_RETRYABLE_LEVELS = frozenset(
    {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
)

#: Codes that end a watch for good: another try would fail the same way.
WATCH_ENDS_ON = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.DATA_LOSS,
    }
)


def methods() -> Iterator[descriptor.MethodDescriptor]:
    """Every RPC of the API."""
    for service in SERVICES:
        yield from service.methods


def level(method: descriptor.MethodDescriptor) -> Level.ValueType:
    return method.GetOptions().idempotency_level


def retryable(method: descriptor.MethodDescriptor) -> bool:
    """Whether failed attempts of ``method`` may be sent again."""
    return level(method) in _RETRYABLE_LEVELS


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The wait in seconds a ``google.rpc.RetryInfo`` in the error's details asks for."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # details inconsistent with the status: ignore them
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return None


def retried(error: grpc.aio.AioRpcError) -> bool:
    """Whether a retryable call that failed with ``error`` is tried again: UNAVAILABLE,
    or RESOURCE_EXHAUSTED when the server said when to come back (a rate limit, not a
    quota)."""
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_delay(error) is not None


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT names this machine: a loopback IP (127.0.0.0/8, ::1),
    ``localhost``, or a unix socket. Other names may resolve anywhere, so they are not."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or "]" in address else address
    host = host.removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
