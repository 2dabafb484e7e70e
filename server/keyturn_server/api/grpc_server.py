"""The gRPC server as Keyturn runs it: its options (connection, message and pending
limits), the three services behind the guard, the standard health service and
reflection, and its listening addresses."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from keyturn.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    handles_pb2,
    handles_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
)
from keyturn_server.api.arrivals import RequestArrivals
from keyturn_server.api.guard import Guard, capture
from keyturn_server.api.open_streams import HealthServicer, PeerStreams, add_reflection
from keyturn_server.connection_budget import HANDSHAKE_TIMEOUT_S
from keyturn_server.domain import limits
from keyturn_server.process.ports import PortUnavailable
from keyturn_server.settings import Settings

SERVICE_NAMES = {
    "keys": keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    "handles": handles_pb2.DESCRIPTOR.services_by_name["HandleService"].full_name,
    "admin": admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
}
#: Responses may be larger than requests (a page of a listing).
MAX_RESPONSE = 4 * 1024 * 1024


def grpc_server(settings: Settings, connection_cap: int) -> grpc.aio.Server:
    """The server, with nothing registered or bound yet."""
    return grpc.aio.server(
        options=[
            # Past its share of file descriptors a listener refuses connections, and
            # one that never finishes its handshake is closed (connection_budget.py).
            ("grpc.max_allowed_incoming_connections", connection_cap),
            # HTTP/2 MAX_CONCURRENT_STREAMS, which grpc sets to no limit. A client that
            # reset each call as soon as it opened it (CVE-2023-44487, "rapid reset")
            # made calls faster than the event loop could start and end them: two
            # connections for 6 s took the server from 73 MiB to 1.3 GB and no other
            # caller was answered. A call stays counted until the server has ended it, so
            # the backlog is bounded per connection, and grpc's own pushback (fewer
            # streams for a round trip after a reset) applies. Generous: the fan-out
            # benchmark holds 625 watches per connection, and a client queues the rest.
            ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
            ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_S * 1000),
            # Past it a message is refused from its length prefix, unread.
            ("grpc.max_receive_message_length", limits.MAX_REQUEST),
            ("grpc.max_send_message_length", MAX_RESPONSE),
            ("grpc.server.max_pending_requests", settings.max_pending_requests),
            ("grpc.server.max_pending_requests_hard_limit", 2 * settings.max_pending_requests),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # grpc shares ports by default, which let a second server bind this one
            # silently; only --workers shares them, on purpose (process/ports.py).
            ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
            *_connection_age(settings.max_connection_age),
        ],
    )


def register(
    server: grpc.aio.Server,
    guard: Guard,
    servicers: Mapping[str, object],
    open_streams: PeerStreams,
    arrivals: RequestArrivals,
) -> HealthServicer:
    """Keyturn's services behind ``guard`` (``servicers`` by full service name), then the
    standard health service and reflection, which need no token: their streams are
    capped per peer instead (open_streams.py). Every call that waits for one request
    message waits within ``arrivals`` (arrivals.py). The health servicer, to set
    statuses on."""
    for name, add in (
        ("keys", keys_pb2_grpc.add_KeyServiceServicer_to_server),
        ("handles", handles_pb2_grpc.add_HandleServiceServicer_to_server),
        ("admin", admin_pb2_grpc.add_AdminServiceServicer_to_server),
    ):
        guard.register(server, add, servicers[SERVICE_NAMES[name]], arrivals.wrap)
    health = HealthServicer(open_streams)
    service, handlers = capture(health_pb2_grpc.add_HealthServicer_to_server, health)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                service, {name: arrivals.wrap(handler) for name, handler in handlers.items()}
            ),
        )
    )
    add_reflection(
        server,
        [
            *SERVICE_NAMES.values(),
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        open_streams,
    )
    return health


def bind(server: grpc.aio.Server, address: str, credentials: Any) -> int:
    """Listen on ``address``. Ports are checked at the start of App.start(); one taken
    since still ends the start with one line instead of grpc's generic error."""
    try:
        if credentials:
            return server.add_secure_port(address, credentials)
        return server.add_insecure_port(address)
    except RuntimeError:
        raise PortUnavailable(f"cannot listen on {address} (grpc could not bind it)") from None


def _connection_age(age: timedelta | None) -> list[tuple[str, int]]:
    """A client is sent GOAWAY once its connection is ``age`` old (grpc adds +-10% so
    clients do not all reconnect at once) and opens a new one, which a balancer or the
    kernel (``--workers``) may place elsewhere. No grace: a stream in progress (a watch
    lasting hours) finishes on the old connection rather than being cut."""
    if age is None:
        return []
    return [("grpc.max_connection_age_ms", int(age.total_seconds() * 1000))]
