"""The specification's REST API under /api/key-management, on the same servicers and
behind the same guard as /v1 and gRPC (docs/rest-compat.md has the mapping).

Each route parses its body *inside* the guarded call, so that authentication comes first
and a malformed body is an ordinary INVALID_ARGUMENT. Routes that take a handle id accept
the public id or the token: in this API a generated handle's ``id`` is its token, because
the specification validates handles by id.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2, resources_pb2
from keyturn_server.api import auth
from keyturn_server.api.guard import Guard, Refused
from keyturn_server.api.http import codec, numerals
from keyturn_server.api.http.caller import HttpCaller
from keyturn_server.api.http.compat import shapes
from keyturn_server.api.http.jsonmap import CODE_NAMES, http_status
from keyturn_server.api.http.responses import challenged, json_response, no_route, not_allowed
from keyturn_server.api.http.transcoder import BODY_TIMEOUT, CallContext, read_json
from keyturn_server.clock import Clock
from keyturn_server.domain.errors import InvalidArgument
from keyturn_server.domain.handle_lookup import HandleLookup, looks_like_token

PREFIX = "/api/key-management"
KEYS, HANDLES, ADMIN = (
    "keyturn.v1.KeyService",
    "keyturn.v1.HandleService",
    "keyturn.v1.AdminService",
)
#: limit/offset paging walks Keyturn's pages; an offset beyond this is refused.
MAX_OFFSET = 10_000
MAX_LIMIT = 1000
_CONTEXT = CallContext()


@dataclass(frozen=True)
class Call:
    """One request to a compatibility route, as its operation sees it."""

    params: dict[str, str]
    request: web.BaseRequest
    #: Seconds the body may take to arrive after the headers.
    body_timeout: float

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.rel_url.query

    async def body(self) -> dict[str, Any]:
        return shapes.body_object(await read_json(self.request, self.body_timeout))


#: An operation: the HTTP status and the envelope's fields on success.
Operation = Callable[[Call], Awaitable[tuple[int, dict[str, Any]]]]


@dataclass(frozen=True)
class CompatRoute:
    verb: str
    pattern: re.Pattern[str]
    #: The RPC it stands for, in logs, metrics and the caller's rate limit.
    rpc: str
    operation: Operation


@dataclass(frozen=True)
class RouteSpec:
    """One route of the specification's table (also read by the OpenAPI generator)."""

    verb: str
    path: str  # under PREFIX, with {parameters}
    service: str
    method: str
    operation: str  # the CompatApi method that serves it
    #: The envelope's field on success ("key", "handles", ...).
    result: str
    summary: str

    @property
    def pattern(self) -> re.Pattern[str]:
        parts = [
            f"(?P<{s[1:-1]}>[^/]+)" if s.startswith("{") else re.escape(s)
            for s in (PREFIX + self.path).split("/")
        ]
        return re.compile("/".join(parts))


def _spec(verb: str, path: str, rpc: str, operation: str, result: str, summary: str) -> RouteSpec:
    service, method = rpc.split("/")
    return RouteSpec(verb, path, f"keyturn.v1.{service}", method, operation, result, summary)


# Statistics before {keyId}: "statistics" is not a key id.
TABLE = [
    _spec(
        "POST", "/keys/generate", "KeyService/GenerateKey", "_generate_key", "key", "Generate a key"
    ),
    _spec(
        "GET",
        "/keys",
        "KeyService/ListKeys",
        "_list_keys",
        "keys",
        "List keys (type, status, limit, offset)",
    ),
    _spec(
        "GET",
        "/keys/statistics",
        "KeyService/GetKeyStatistics",
        "_key_statistics",
        "statistics",
        "Key statistics",
    ),
    _spec("GET", "/keys/{keyId}", "KeyService/GetKey", "_get_key", "key", "Get a key"),
    _spec(
        "POST",
        "/keys/{keyId}/rotate",
        "KeyService/RotateKey",
        "_rotate_key",
        "key",
        "Rotate a key (a new primary version)",
    ),
    _spec(
        "DELETE",
        "/keys/{keyId}",
        "KeyService/RemoveKey",
        "_remove_key",
        "key",
        "Remove a key (destruction after the waiting period)",
    ),
    _spec(
        "POST",
        "/handles/generate",
        "HandleService/GenerateHandle",
        "_generate_handle",
        "handle",
        "Generate a handle: its id is its secret token, shown once",
    ),
    _spec(
        "GET",
        "/handles",
        "HandleService/ListHandles",
        "_list_handles",
        "handles",
        "List handles (never with tokens)",
    ),
    _spec(
        "GET",
        "/handles/statistics",
        "HandleService/GetHandleStatistics",
        "_handle_stats",
        "statistics",
        "Handle statistics",
    ),
    _spec(
        "POST",
        "/handles/validate",
        "HandleService/ValidateHandle",
        "_validate",
        "validation",
        "Validate a handle by its id (its token) and count the use",
    ),
    _spec(
        "GET",
        "/handles/{handleId}",
        "HandleService/GetHandle",
        "_get_handle",
        "handle",
        "Get a handle by public id or token",
    ),
    _spec(
        "POST",
        "/handles/{handleId}/rotate",
        "HandleService/RotateHandle",
        "_rotate_handle",
        "handle",
        "Rotate a handle (public id or token): a new token",
    ),
    _spec(
        "DELETE",
        "/handles/{handleId}",
        "HandleService/RemoveHandle",
        "_remove_handle",
        "handle",
        "Revoke a handle (public id or token)",
    ),
    _spec("GET", "/health", "AdminService/GetHealth", "_health", "health", "Overall health"),
    _spec(
        "GET",
        "/health/{component}",
        "AdminService/GetHealth",
        "_health",
        "health",
        "Health of one component: keys, handles, store or scheduler",
    ),
    _spec(
        "GET",
        "/config",
        "AdminService/GetConfig",
        "_get_config",
        "config",
        "The configuration (durations in milliseconds)",
    ),
    _spec(
        "PUT",
        "/config",
        "AdminService/UpdateConfig",
        "_update_config",
        "config",
        "Merge key types, handle types and policies into the configuration",
    ),
]


class CompatApi:
    def __init__(
        self,
        guard: Guard,
        servicers: Mapping[str, Any],
        lookup: HandleLookup,
        clock: Clock,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self._guard = guard
        self._body_timeout = body_timeout
        self._keys = servicers[KEYS]
        self._handles = servicers[HANDLES]
        self._admin = servicers[ADMIN]
        self._lookup = lookup
        self._clock = clock
        self.routes = [
            CompatRoute(
                route.verb,
                route.pattern,
                f"/{route.service}/{route.method}",
                getattr(self, route.operation),
            )
            for route in TABLE
        ]
        # Literal paths by dictionary (most routes, the validation among them); the
        # others by their patterns, in the table's order.
        self._exact: dict[str, dict[str, CompatRoute]] = {}
        self._templated: list[CompatRoute] = []
        for spec, route in zip(TABLE, self.routes, strict=True):
            if "{" in spec.path:
                self._templated.append(route)
            else:
                self._exact.setdefault(PREFIX + spec.path, {})[route.verb] = route

    # --- dispatch ------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.rel_url.path
        route, params, allowed = self._find(request.method, path)
        if route is not None:
            call = Call(params, request, self._body_timeout)
            try:
                status, fields = await self._guard.unary(
                    route.rpc, HttpCaller(request), call, route.operation, "compat"
                )
            except Refused as refused:
                return self._error(refused.status)
            return self._envelope(status, fields)
        if allowed:
            response = self._error(
                # As on /v1: grpc-gateway's name for a verb the path does not take.
                status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message=not_allowed(request.method)),
                405,
            )
            response.headers["Allow"] = ", ".join(sorted(set(allowed)))
            return response
        return self._error(
            status_pb2.Status(code=code_pb2.NOT_FOUND, message=no_route(request.method))
        )

    def _find(self, verb: str, path: str) -> tuple[CompatRoute | None, dict[str, str], list[str]]:
        """The route and its parameters, or None and the verbs the path allows."""
        allowed: list[str] = []
        by_verb = self._exact.get(path)
        if by_verb is not None:
            route = by_verb.get(verb)
            if route is not None:
                return route, {}, allowed
            allowed.extend(by_verb)
        for route in self._templated:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            if route.verb != verb:
                allowed.append(route.verb)
                continue
            return route, found.groupdict(), allowed
        return None, {}, allowed

    def _envelope(self, status: int, fields: dict[str, Any]) -> web.Response:
        document = {"success": True, **fields, "timestamp": shapes.iso(self._clock.now())}
        return json_response(codec.dumps(document), status)

    def _error(self, status: status_pb2.Status, http: int | None = None) -> web.Response:
        """The specification's error shape: success false and an error message; Keyturn
        adds the status name, the ErrorInfo reason and field violations."""
        document: dict[str, Any] = {
            "success": False,
            "error": status.message,
            "code": CODE_NAMES.get(status.code, "UNKNOWN"),
        }
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                document["reason"] = info.reason
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                document["fieldViolations"] = [
                    {"field": v.field, "description": v.description} for v in bad.field_violations
                ]
        document["timestamp"] = shapes.iso(self._clock.now())
        return challenged(json_response(codec.dumps(document), http or http_status(status)), status)

    # --- keys ----------------------------------------------------------------------

    async def _generate_key(self, call: Call) -> tuple[int, dict[str, Any]]:
        body = await call.body()
        request = keys_pb2.GenerateKeyRequest(
            type=shapes.text_field(body, "type", required=True),
            metadata=shapes.string_map(body, "metadata"),
            user_id=shapes.text_field(body, "userId"),
        )
        response = await self._keys.GenerateKey(request, _CONTEXT)
        return 201, {"key": shapes.plain(response.key)}

    async def _list_keys(self, call: Call) -> tuple[int, dict[str, Any]]:
        limit, offset = _paging(call.query)
        status = call.query.get("status", "")
        request = keys_pb2.ListKeysRequest(
            type=call.query.get("type", ""),
            status=cast(
                Any,
                shapes.enum_number(resources_pb2.KeyStatus.DESCRIPTOR, status, "status")
                if status
                else 0,
            ),
        )
        found, total = await _window(self._keys.ListKeys, request, "keys", limit, offset)
        return 200, {
            "keys": [shapes.plain(k) for k in found],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    async def _key_statistics(self, call: Call) -> tuple[int, dict[str, Any]]:
        response = await self._keys.GetKeyStatistics(keys_pb2.GetKeyStatisticsRequest(), _CONTEXT)
        return 200, {"statistics": shapes.plain(response.statistics)}

    async def _get_key(self, call: Call) -> tuple[int, dict[str, Any]]:
        key = await self._keys.GetKey(keys_pb2.GetKeyRequest(key_id=call.params["keyId"]), _CONTEXT)
        return 200, {"key": shapes.plain(key)}

    async def _rotate_key(self, call: Call) -> tuple[int, dict[str, Any]]:
        body = await call.body()
        key = await self._keys.RotateKey(
            keys_pb2.RotateKeyRequest(key_id=call.params["keyId"], **_on_behalf(body)), _CONTEXT
        )
        return 200, {"key": shapes.plain(key)}

    async def _remove_key(self, call: Call) -> tuple[int, dict[str, Any]]:
        body = await call.body()
        key = await self._keys.RemoveKey(
            keys_pb2.RemoveKeyRequest(key_id=call.params["keyId"], **_on_behalf(body)), _CONTEXT
        )
        return 200, {"key": shapes.plain(key)}

    # --- handles -------------------------------------------------------------------

    async def _generate_handle(self, call: Call) -> tuple[int, dict[str, Any]]:
        body = await call.body()
        request = handles_pb2.GenerateHandleRequest(
            type=shapes.text_field(body, "type", required=True),
            context=shapes.string_map(body, "context", rename=True),
            user_id=shapes.text_field(body, "userId"),
        )
        response = await self._handles.GenerateHandle(request, _CONTEXT)
        return 201, {"handle": _issued(response.handle, response.token)}

    async def _list_handles(self, call: Call) -> tuple[int, dict[str, Any]]:
        limit, offset = _paging(call.query)
        status = call.query.get("status", "")
        request = handles_pb2.ListHandlesRequest(
            type=call.query.get("type", ""),
            status=cast(
                Any,
                shapes.enum_number(resources_pb2.HandleStatus.DESCRIPTOR, status, "status")
                if status
                else 0,
            ),
        )
        found, total = await _window(self._handles.ListHandles, request, "handles", limit, offset)
        return 200, {
            "handles": [_public(h) for h in found],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    async def _handle_stats(self, call: Call) -> tuple[int, dict[str, Any]]:
        response = await self._handles.GetHandleStatistics(
            handles_pb2.GetHandleStatisticsRequest(), _CONTEXT
        )
        return 200, {"statistics": shapes.plain(response.statistics)}

    async def _validate(self, call: Call) -> tuple[int, dict[str, Any]]:
        body = await call.body()
        token = shapes.text_field(body, "handleId") or shapes.text_field(body, "token")
        if not token:
            raise InvalidArgument("required: the handle's id (its token)", field="handleId")
        request = handles_pb2.ValidateHandleRequest(
            token=token, user_id=shapes.text_field(body, "userId")
        )
        context = shapes.string_map(body, "context", rename=True)
        if context:  # a map given to the constructor costs about 2 µs, even empty
            request.context.update(context)
        response = await self._handles.ValidateHandle(request, _CONTEXT)
        validation = shapes.plain(response.validation)
        # Keyturn's handle_id is the public id; here "id" means the token, so it is renamed.
        validation["publicId"] = validation.pop("handleId", "")
        return 200, {"validation": validation}

    async def _handle_id(self, value: str) -> str:
        """A route's {handleId}: the public id as given, or the handle its token names."""
        if looks_like_token(value):
            return await self._lookup.handle_id(auth.current(), value)
        return value

    async def _get_handle(self, call: Call) -> tuple[int, dict[str, Any]]:
        handle_id = await self._handle_id(call.params["handleId"])
        handle = await self._handles.GetHandle(
            handles_pb2.GetHandleRequest(handle_id=handle_id), _CONTEXT
        )
        return 200, {"handle": _public(handle)}

    async def _rotate_handle(self, call: Call) -> tuple[int, dict[str, Any]]:
        body = await call.body()
        given = call.params["handleId"]
        target = {"token": given} if looks_like_token(given) else {"handle_id": given}
        # By token, the presentation must carry the handle's bound context (ip,
        # userAgent), as a validation does.
        context = shapes.string_map(body, "context", rename=True) if "token" in target else {}
        response = await self._handles.RotateHandle(
            handles_pb2.RotateHandleRequest(**target, context=context, **_on_behalf(body)),
            _CONTEXT,
        )
        handle = _issued(response.handle, response.token)
        handle["previousValidUntil"] = shapes.plain(response).get("previousValidUntil")
        return 200, {"handle": handle}

    async def _remove_handle(self, call: Call) -> tuple[int, dict[str, Any]]:
        body = await call.body()
        handle_id = await self._handle_id(call.params["handleId"])
        handle = await self._handles.RemoveHandle(
            handles_pb2.RemoveHandleRequest(handle_id=handle_id, **_on_behalf(body)), _CONTEXT
        )
        return 200, {"handle": _public(handle)}

    # --- health and configuration --------------------------------------------------

    async def _health(self, call: Call) -> tuple[int, dict[str, Any]]:
        component = call.params.get("component", "")
        response = await self._admin.GetHealth(
            admin_pb2.GetHealthRequest(component=component), _CONTEXT
        )
        serving = response.health.status == admin_pb2.SERVING_STATUS_SERVING
        # Monitors read the status code: 503 while any part is not serving.
        return (200 if serving else 503), {"health": shapes.plain(response.health)}

    async def _get_config(self, call: Call) -> tuple[int, dict[str, Any]]:
        config = await self._admin.GetConfig(admin_pb2.GetConfigRequest(), _CONTEXT)
        return 200, {"config": shapes.plain(config)}

    async def _update_config(self, call: Call) -> tuple[int, dict[str, Any]]:
        body = await call.body()
        config, mask = shapes.config_update(body)
        request = admin_pb2.UpdateConfigRequest(
            config=config,
            update_mask=field_mask_pb2.FieldMask(paths=mask),
            # The specification has no etag: without one the update applies to the
            # latest configuration. Given one, a stale one is refused (409).
            etag=shapes.text_field(body, "etag"),
            user_id=shapes.text_field(body, "userId"),
            reason=shapes.text_field(body, "reason"),
        )
        updated = await self._admin.UpdateConfig(request, _CONTEXT)
        return 200, {"config": shapes.plain(updated)}


def _on_behalf(body: Mapping[str, Any]) -> dict[str, str]:
    return {
        "user_id": shapes.text_field(body, "userId"),
        "reason": shapes.text_field(body, "reason"),
    }


def _public(handle: Message) -> dict[str, Any]:
    """A handle as listed or read: its public id, never a token."""
    shown = shapes.plain(handle)
    shown["publicId"] = shown["id"]
    return shown


def _issued(handle: Message, token: str) -> dict[str, Any]:
    """A handle as generated or rotated: ``id`` is the token (shown once), as the
    specification's clients validate by id; ``publicId`` names it without the secret."""
    shown = shapes.plain(handle)
    shown["publicId"] = shown["id"]
    shown["id"] = token
    return shown


def _paging(query: Mapping[str, str]) -> tuple[int, int]:
    def number(name: str, default: int, top: int) -> int:
        text = query.get(name, "")
        if not text:
            return default
        number = numerals.whole_number(text, top)
        if number is None:
            raise InvalidArgument(f"must be a whole number from 0 to {top}", field=name)
        return number

    return number("limit", 50, MAX_LIMIT) or 50, number("offset", 0, MAX_OFFSET)


async def _window(
    method: Callable[[Any, Any], Awaitable[Any]],
    request: Any,
    items: str,
    limit: int,
    offset: int,
) -> tuple[list[Any], int]:
    """``limit`` items from ``offset`` on, by walking Keyturn's page tokens (its pages
    resume after a cursor, so an offset costs reading what it skips: hence MAX_OFFSET)."""
    wanted = offset + limit
    found: list[Any] = []
    total = 0
    token = ""
    while len(found) < wanted:
        request.page_size = min(MAX_LIMIT, wanted - len(found))
        request.page_token = token
        page = await method(request, _CONTEXT)
        found.extend(getattr(page, items))
        total = page.total_size
        token = page.next_page_token
        if not token:
            break
    return found[offset:wanted], total
