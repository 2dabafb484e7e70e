"""Around every Keyturn RPC: authenticate, rate-limit the caller, map domain errors to
gRPC statuses (the servicers never catch), count, and write the access log.

The guard wraps each method handler once, when the services are registered, rather than
as a grpc interceptor, which would rebuild a handler on every call. Health and reflection
are registered unguarded: they need no token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from keyturn_server.api import auth
from keyturn_server.api.ratelimit import CallerLimiter
from keyturn_server.api.status import code_of, to_status
from keyturn_server.domain.errors import InvalidArgument, KeyturnError
from keyturn_server.domain.statistics import Statistics
from keyturn_server.observability.access import AccessLog
from keyturn_server.observability.metrics import Metrics

log = logging.getLogger("keyturn.api")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class _Undecodable:
    """Stands in for a request that failed to parse, so that the caller gets
    INVALID_ARGUMENT instead of the INTERNAL that gRPC would answer."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, UnicodeDecodeError) as exc:
            return _Undecodable(exc)

    return parse


class _Capture:
    """Stands in for the server while a generated ``add_*_to_server`` runs, to collect the
    method handlers it would register."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Handler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self.service, self.handlers = service, handlers


class Guard:
    def __init__(
        self,
        authenticator: auth.Authenticator,
        limiter: CallerLimiter,
        stats: Statistics,
        metrics: Metrics | None,
        access: AccessLog | None = None,
    ) -> None:
        self._auth = authenticator
        self._limiter = limiter
        self._stats = stats
        self._metrics = metrics
        self.access = access or AccessLog()

    def register(
        self, server: grpc.aio.Server, add: Callable[[Any, Any], None], servicer: object
    ) -> None:
        """Register ``servicer`` as the generated ``add`` would, every method guarded."""
        capture = _Capture()
        add(servicer, capture)
        guarded = {
            name: self._guard(f"/{capture.service}/{name}", handler)
            for name, handler in capture.handlers.items()
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(capture.service, guarded),)
        )
        server.add_registered_method_handlers(capture.service, guarded)  # type: ignore[attr-defined]

    def _guard(self, method: str, handler: Handler) -> Handler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        assert handler.unary_stream is not None
        return grpc.unary_stream_rpc_method_handler(
            self._stream(method, handler.unary_stream),  # type: ignore[arg-type]
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        service = _service_of(method)

        async def run(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            # Read now: once the caller has gone, asking the call for its peer crashes grpc.
            peer = auth.peer_host(context.peer() or "")
            code = grpc.StatusCode.OK
            principal = ""
            try:
                principal = await self._enter(request, context, method, peer)
                return await behavior(request, context)
            except KeyturnError as exc:
                code = code_of(exc)
                await _abort(context, exc)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                await self._internal(context, method)
            finally:
                self._done(method, service, code, started, principal, peer)

        return run

    def _stream(
        self, method: str, behavior: Callable[..., AsyncGenerator[Any, None]]
    ) -> Callable[..., AsyncIterator[Any]]:
        service = _service_of(method)

        async def run(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            # Read now: once the caller has gone, asking the call for its peer crashes grpc.
            peer = auth.peer_host(context.peer() or "")
            code = grpc.StatusCode.OK
            principal = ""
            try:
                principal = await self._enter(request, context, method, peer)
                async with contextlib.aclosing(behavior(request, context)) as messages:
                    async for message in messages:
                        yield message
            except KeyturnError as exc:
                code = code_of(exc)
                await _abort(context, exc)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except (GeneratorExit, asyncio.CancelledError):
                # The caller went away: nothing may be sent or awaited on this call now.
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                await self._internal(context, method)
            finally:
                self._done(method, service, code, started, principal, peer)

        return run

    async def _enter(self, request: Any, context: Context, method: str, peer: str) -> str:
        """Authenticate, rate-limit and bind the caller; the principal's name."""
        principal = await self._auth.principal(context, method, peer)
        # Each RPC runs in its own task, so the binding ends with it: nothing to undo.
        auth.bind(principal)
        self._limiter.take(principal.name)
        if isinstance(request, _Undecodable):
            raise InvalidArgument(
                "the request message could not be parsed (invalid protobuf or UTF-8)",
                field="request",
                reason="MALFORMED_REQUEST",
            )
        return principal.name

    async def _internal(self, context: Context, method: str) -> None:
        ref = secrets.token_hex(6)
        log.exception("unexpected error", extra={"category": "error", "method": method, "ref": ref})
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (reference {ref})")

    def _done(
        self,
        method: str,
        service: str,
        code: grpc.StatusCode,
        started: float,
        principal: str,
        peer: str,
    ) -> None:
        elapsed = time.perf_counter() - started
        self._stats.requests[service] += 1
        if code is not grpc.StatusCode.OK:
            self._stats.errors[service] += 1
        if self._metrics is not None:
            self._metrics.observe_rpc(method, code.name, elapsed)
        self.access.record(method, code.name, elapsed, principal, peer)


def _service_of(method: str) -> str:
    """'/keyturn.v1.KeyService/GetKey' -> 'keyturn.v1.KeyService'."""
    return method.rsplit("/", 2)[-2] if method.count("/") >= 2 else method


async def _abort(context: Context, error: KeyturnError) -> None:
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
