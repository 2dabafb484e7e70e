"""Around every Keyturn call, over gRPC and HTTP alike: authenticate, rate-limit the
caller, map domain errors to a google.rpc.Status (the servicers never catch), count, and
write the access log.

``Guard.unary`` and ``Guard.stream`` are that one code path; each transport only adapts
it. For gRPC the guard wraps each method handler once, when the services are registered,
rather than as a grpc interceptor, which would rebuild a handler on every call. Health and
reflection are registered unguarded: they need no token. The HTTP transcoder
(``api/http``) calls the same two methods with the servicers' own behaviours.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from grpc_status import rpc_status

from keyturn_server.api import auth
from keyturn_server.api.ratelimit import CallerLimiter
from keyturn_server.api.standing import Standing, Sweep
from keyturn_server.api.status import code_of, internal_status, status_of
from keyturn_server.domain.access import Permission, Principal
from keyturn_server.domain.errors import InvalidArgument, KeyturnError, Unauthenticated
from keyturn_server.domain.statistics import Statistics
from keyturn_server.observability.access import AccessLog
from keyturn_server.observability.metrics import Metrics

log = logging.getLogger("keyturn.api")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Unary: TypeAlias = Callable[[Any], Awaitable[Any]]
Streaming: TypeAlias = Callable[[Any], AsyncGenerator[Any, None]]


class Unparsable:
    """Stands in for a request that failed to parse, so that the caller gets
    INVALID_ARGUMENT (after authentication, like any other call) instead of the INTERNAL
    that gRPC would answer or a transport-specific error."""

    def __init__(self, error: KeyturnError) -> None:
        self.error = error


class Refused(Exception):
    """A guarded call failed; ``status`` is what its caller gets, on either transport."""

    def __init__(self, code: grpc.StatusCode, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.code = code
        self.status = status


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, UnicodeDecodeError):
            return Unparsable(
                InvalidArgument(
                    "the request message could not be parsed (invalid protobuf or UTF-8)",
                    field="request",
                    reason="MALFORMED_REQUEST",
                )
            )

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


def capture(add: Callable[[Any, Any], None], servicer: object) -> tuple[str, dict[str, Handler]]:
    """The service name and method handlers a generated ``add_*_to_server`` registers."""
    captured = _Capture()
    add(servicer, captured)
    return captured.service, captured.handlers


class Guard:
    def __init__(
        self,
        authenticator: auth.Authenticator,
        limiter: CallerLimiter,
        stats: Statistics,
        metrics: Metrics | None,
        access: AccessLog | None = None,
        classify: Callable[[BaseException], KeyturnError | None] = lambda _: None,
    ) -> None:
        self._auth = authenticator
        #: Ends open streams whose credentials were revoked, idle ones included.
        self._sweep = Sweep()
        #: The store's reading of its own failures (a damaged file): known, said in its
        #: log once, and answered with their status rather than INTERNAL.
        self._classify = classify
        self._limiter = limiter
        self._stats = stats
        self._metrics = metrics
        self.access = access or AccessLog()

    # --- the one code path ---------------------------------------------------------

    async def unary(
        self,
        method: str,
        caller: auth.Caller,
        request: Any,
        behavior: Unary,
        transport: str = "grpc",
    ) -> Any:
        """``behavior(request)`` as ``caller``; raises Refused when it fails."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        principal = ""
        who: Principal | None = None
        try:
            try:
                who = self._auth.identify(caller)
            except Unauthenticated as exc:
                await self._auth.audit_failure(caller, method, exc)
                raise
            principal = self._enter(who, request)
            # Unary calls only: a stream is in progress for hours and has its own cap.
            self._limiter.enter(principal)
            try:
                return await behavior(request)
            finally:
                self._limiter.leave(principal)
        except KeyturnError as exc:
            code = code_of(exc)
            raise Refused(code, status_of(exc, _diagnosable(who))) from None
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            refused = self._unexpected(method, exc, who)
            code = refused.code
            raise refused from None
        finally:
            self._done(method, code, started, principal, caller.peer, transport)

    async def stream(
        self,
        method: str,
        caller: auth.Caller,
        request: Any,
        behavior: Streaming,
        transport: str = "grpc",
    ) -> AsyncGenerator[Any, None]:
        """The messages of ``behavior(request)`` as ``caller``; raises Refused when it
        fails, before or during the stream."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        principal = ""
        who: Principal | None = None
        try:
            try:
                who = self._auth.identify(caller)
            except Unauthenticated as exc:
                await self._auth.audit_failure(caller, method, exc)
                raise
            principal = self._enter(who, request)
            standing = Standing(self._auth, caller, who)
            try:
                try:
                    with self._sweep.watching(standing):
                        async with contextlib.aclosing(behavior(request)) as messages:
                            async for message in messages:
                                standing.check(bool(getattr(message, "token", "")))
                                yield message
                except asyncio.CancelledError:
                    if standing.ended is None or standing.task is None:
                        raise
                    standing.task.uncancel()  # the sweep's cancellation: the stream ends
                    raise standing.ended from None
            except Unauthenticated as exc:
                # Audited as a refused login would be: the credential was used.
                await self._auth.audit_failure(caller, method, exc)
                raise
        except KeyturnError as exc:
            code = code_of(exc)
            raise Refused(code, status_of(exc, _diagnosable(who))) from None
        except (GeneratorExit, asyncio.CancelledError):
            # The caller went away: nothing may be sent or awaited on this call now.
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            refused = self._unexpected(method, exc, who)
            code = refused.code
            raise refused from None
        finally:
            self._done(method, code, started, principal, caller.peer, transport)

    def _enter(self, principal: Principal, request: Any) -> str:
        """Rate-limit and bind the authenticated caller; its name. Not a coroutine, nor
        is authentication when it succeeds: every call goes through here."""
        # Each call runs in its own task, so the binding ends with it: nothing to undo.
        auth.bind(principal)
        self._limiter.take(principal.name)
        if isinstance(request, Unparsable):
            raise request.error
        return principal.name

    def _unexpected(self, method: str, exc: Exception, who: Principal | None) -> Refused:
        known = self._classify(exc)
        if known is not None:
            return Refused(code_of(known), status_of(known, _diagnosable(who)))
        return Refused(grpc.StatusCode.INTERNAL, self._internal(method))

    def _internal(self, method: str) -> status_pb2.Status:
        ref = secrets.token_hex(6)
        log.exception("unexpected error", extra={"category": "error", "method": method, "ref": ref})
        return internal_status(ref)

    def _done(
        self,
        method: str,
        code: grpc.StatusCode,
        started: float,
        principal: str,
        peer: str,
        transport: str,
    ) -> None:
        elapsed = time.perf_counter() - started
        service = _service_of(method)
        self._stats.requests[service] += 1
        if code is not grpc.StatusCode.OK:
            self._stats.errors[service] += 1
        if self._metrics is not None:
            self._metrics.observe_rpc(method, code.name, elapsed)
        self.access.record(method, code.name, elapsed, principal, peer, transport=transport)

    # --- gRPC ----------------------------------------------------------------------

    def register(
        self,
        server: grpc.aio.Server,
        add: Callable[[Any, Any], None],
        servicer: object,
        prepare: Callable[[Handler], Handler] = lambda handler: handler,
    ) -> None:
        """Register ``servicer``'s methods, every one guarded, as generic handlers only.

        Not as registered methods, which the generated ``add`` also makes: grpc.aio's
        server keeps one pending request per registered method and waits on all of
        them (``asyncio.wait``) for every call it accepts, so each call paid for every
        method of every service (about 45 here; 20 µs of CPU per call). A generic
        handler is found by one dictionary lookup per service. ``prepare`` adapts each
        guarded handler to the transport (api/arrivals.py)."""
        service, handlers = capture(add, servicer)
        guarded = {
            name: prepare(self._guard(f"/{service}/{name}", handler))
            for name, handler in handlers.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))

    def _guard(self, method: str, handler: Handler) -> Handler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._grpc_unary(method, handler.unary_unary),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        assert handler.unary_stream is not None
        return grpc.unary_stream_rpc_method_handler(
            self._grpc_stream(method, handler.unary_stream),  # type: ignore[arg-type]
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )

    def _grpc_unary(
        self, method: str, behavior: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Any]:
        async def run(request: Any, context: Context) -> Any:
            caller = auth.GrpcCaller(context)
            try:
                return await self.unary(
                    method, caller, request, lambda message: behavior(message, context)
                )
            except Refused as refused:
                await _abort(context, refused)

        return run

    def _grpc_stream(
        self, method: str, behavior: Callable[..., AsyncGenerator[Any, None]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, context: Context) -> AsyncIterator[Any]:
            caller = auth.GrpcCaller(context)
            messages = self.stream(
                method, caller, request, lambda message: behavior(message, context)
            )
            try:
                async with contextlib.aclosing(messages):
                    async for message in messages:
                        yield message
            except Refused as refused:
                await _abort(context, refused)

        return run


def _diagnosable(who: Principal | None) -> bool:
    """Whether the caller reads what failed inside (the database's own words) in its
    errors: an authenticated operator. Tenants, and callers not yet authenticated, read
    what it means to them (UNAVAILABLE, retry) and the reason code."""
    return who is not None and who.may(Permission.DIAGNOSTICS_READ)


@functools.lru_cache(maxsize=256)
def _service_of(method: str) -> str:
    """'/keyturn.v1.KeyService/GetKey' -> 'keyturn.v1.KeyService'."""
    return method.rsplit("/", 2)[-2] if method.count("/") >= 2 else method


async def _abort(context: Context, refused: Refused) -> None:
    status = rpc_status.to_status(refused.status)
    await context.abort(status.code, status.details, status.trailing_metadata)
