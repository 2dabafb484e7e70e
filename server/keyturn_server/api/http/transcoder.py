"""HTTP/JSON for every RPC that carries a google.api.http rule: the request message is
built from the path, the query and the JSON body, the servicer method runs in process
behind the same guard as over gRPC, and the response (or the google.rpc.Status) goes back
as JSON. Server-streaming methods answer as Server-Sent Events (``sse.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import StreamReader, web
from google.protobuf import descriptor
from google.protobuf.message import Message
from google.rpc import code_pb2

from keyturn_server.api.guard import Guard, Refused, Unparsable
from keyturn_server.api.http import codec, sse
from keyturn_server.api.http.caller import HttpCaller
from keyturn_server.api.http.jsonmap import request_from, to_json
from keyturn_server.api.http.responses import (
    JSON,
    error_response,
    json_response,
    no_route,
    not_allowed,
    status_response,
)
from keyturn_server.api.http.rules import Route, Router, routes_of
from keyturn_server.domain import limits
from keyturn_server.domain.errors import InvalidArgument, KeyturnError

#: The largest request body, as for gRPC messages.
MAX_BODY = limits.MAX_REQUEST
#: Seconds a body may take to arrive after its headers, unless the listener says
#: otherwise (it passes --http-idle-timeout).
BODY_TIMEOUT = 30.0


class CallContext:
    """What a servicer may ask of its call, answered for HTTP: nothing to send early for
    unary calls (Server-Sent Events bring their own)."""

    async def send_initial_metadata(self, metadata: object) -> None:
        return None


_UNARY_CONTEXT = CallContext()


class Transcoder:
    def __init__(
        self,
        guard: Guard,
        servicers: Mapping[str, object],
        services: Iterable[descriptor.ServiceDescriptor],
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self._guard = guard
        self._body_timeout = body_timeout
        self.router = Router(routes_of(services))
        self._behaviors: dict[str, Callable[..., Any]] = {
            route.rpc: getattr(
                servicers[route.method.containing_service.full_name], route.method.name
            )
            for route in self.router.routes
        }

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.rel_url.raw_path
        found = self.router.match(request.method, path)
        if found is None:
            return self.no_route(request.method, path)
        route, variables = found
        message = await self._message(request, route, variables)
        behavior = self._behaviors[route.rpc]
        if route.streaming:
            caller = HttpCaller(request, query_token=True)
            return await sse.serve(request, route, message, self._guard, caller, behavior)
        caller = HttpCaller(request)
        try:
            response = await self._guard.unary(
                route.rpc, caller, message, lambda m: behavior(m, _UNARY_CONTEXT), "http"
            )
        except Refused as refused:
            return error_response(refused.status)
        return json_response(to_json(response))

    def no_route(self, verb: str, path: str) -> web.Response:
        allowed = self.router.allowed(path)
        if allowed:
            # grpc-gateway's name for a verb the path does not take (its 501 is less
            # precise than 405 with Allow, which HTTP clients and proxies understand).
            response = status_response(code_pb2.UNIMPLEMENTED, not_allowed(verb), http=405)
            response.headers["Allow"] = ", ".join(allowed)
            return response
        return status_response(code_pb2.NOT_FOUND, no_route(verb))

    async def _message(
        self, request: web.BaseRequest, route: Route, variables: dict[str, str]
    ) -> Message | Unparsable:
        try:
            body = await read_json(request, self._body_timeout)
            # A route whose body is the whole request takes no query parameters.
            query = () if route.body == "*" else request.rel_url.query.items()
            message = request_from(route, variables, query, body)
            if route.streaming:
                sse.resume_from_header(request, message)
            return message
        except KeyturnError as exc:
            return Unparsable(exc)


async def read_json(request: web.BaseRequest, within: float = BODY_TIMEOUT) -> Any:
    """The JSON body, or None when there is none. A body must be declared JSON: a
    browser cannot send that cross-origin without a CORS preflight, which is not granted,
    so a web page cannot drive a local development server. A body still arriving
    ``within`` seconds after its headers is refused and its connection closed."""
    if not request.body_exists:
        return None
    declared = request.content_length
    if declared is not None and declared > MAX_BODY:
        raise _too_large()  # refused before a byte of it is read
    content = request.content
    try:
        if content.is_eof():
            # All of it arrived with the headers (nearly every API call): take it as it
            # is rather than through read()'s loop of awaits, a tenth of a validation's time.
            raw = content.read_nowait()
            if len(raw) > MAX_BODY:
                raise _too_large()
        else:
            try:
                async with asyncio.timeout(within):
                    raw = await _read_at_most(content, MAX_BODY)
            except TimeoutError:
                raise _too_slow(request, within) from None
    except web.RequestPayloadError:
        # aiohttp decodes a Content-Encoding (gzip, deflate) as the bytes arrive and
        # reports bytes that do not decode only to the reader of the body.
        raise _unreadable(request) from None
    if not raw.strip():
        return None
    media = request.content_type
    if media != JSON and not media.endswith("+json"):
        raise InvalidArgument(
            f"a request body must be {JSON}, not {media or 'undeclared'}",
            field="Content-Type",
            reason="UNSUPPORTED_MEDIA_TYPE",
        )
    try:
        return codec.loads(raw)
    except codec.DecodeError as exc:
        raise InvalidArgument(f"the request body is not JSON: {exc}", field="body") from None
    except codec.DuplicateName as exc:
        raise InvalidArgument(
            f"the request body names {limits.quote(exc.name)} twice in one object",
            field="body",
        ) from None


async def _read_at_most(content: StreamReader, limit: int) -> bytes:
    """The body as it arrives (chunked, or slower than its headers), refused as soon as
    it passes ``limit`` rather than once aiohttp's own limit (1 MiB) is read."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> InvalidArgument:
    return InvalidArgument(
        f"the request body exceeds {MAX_BODY} bytes", field="body", reason="BODY_TOO_LARGE"
    )


def _too_slow(request: web.BaseRequest, within: float) -> InvalidArgument:
    """A body not all there ``within`` seconds after its headers (a slow POST). While a
    request is in progress its connection is not idle, so the idle timeout never closed
    such a connection: one host could hold the listener's whole share of connections,
    sending nothing more (on /v1, bodies are read before the caller is known). The rest
    of the body is never read, so this answer is the connection's last."""
    request.content.feed_eof()
    request.protocol.close()
    return InvalidArgument(
        f"the request body did not arrive within {within:g} s (--http-idle-timeout)",
        field="body",
        reason="BODY_TIMEOUT",
    )


def _unreadable(request: web.BaseRequest) -> InvalidArgument:
    """The refusal of a body aiohttp could not read. Its parser reads nothing more from
    the connection, so the answer is the connection's last; and the body counts as read,
    or aiohttp would drain it after the answer, meet the error again and log it as an
    unhandled exception with its traceback."""
    request.content.feed_eof()
    request.protocol.close()
    if "Content-Encoding" in request.headers:
        message = "the request body does not decode as its Content-Encoding declares"
    else:
        message = "the request body ends before its framing says"
    return InvalidArgument(message, field="body", reason="MALFORMED_BODY")
