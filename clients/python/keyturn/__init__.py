"""Keyturn client: a typed asyncio client (``AsyncClient``), a blocking one (``Client``),
their errors, and the generated ``keyturn.v1`` messages they return.

::

    import keyturn
    from keyturn.v1 import events_pb2

    async with keyturn.AsyncClient("127.0.0.1:50051", token=token) as client:
        created = await client.generate_key("encryption", user_id="user123")
        async for event in client.watch_expiring("keys"):
            print(event.sequence, events_pb2.EventKind.Name(event.kind))
"""

from keyturn import v1
from keyturn._client import DEFAULT_ADDRESS, AsyncClient
from keyturn._errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    KeyturnError,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
)
from keyturn._policy import is_loopback
from keyturn._retry import NO_RETRY, Backoff, RetryPolicy
from keyturn._sync import BlockingWatch, Client
from keyturn._transport import TLS
from keyturn._watch import WATCH_BACKOFF, WATCH_SILENCE, Silence, Watch

__all__ = [
    "DEFAULT_ADDRESS",
    "NO_RETRY",
    "TLS",
    "WATCH_BACKOFF",
    "WATCH_SILENCE",
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "Backoff",
    "BlockingWatch",
    "Cancelled",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "KeyturnError",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "ServerError",
    "Silence",
    "Unauthenticated",
    "Unavailable",
    "Watch",
    "is_loopback",
    "v1",
]
