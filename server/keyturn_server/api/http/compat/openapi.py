"""The specification's routes in the OpenAPI document: its request bodies as the
specification wrote them, and its envelopes."""

from __future__ import annotations

from typing import Any

from keyturn_server.api.http.compat.routes import PREFIX, TABLE

_TEXT = {"type": "string"}
_STRINGS = {"type": "object", "additionalProperties": _TEXT}
_MS = {"type": "number", "minimum": 0, "description": "milliseconds"}
_COUNT = {"type": "integer", "minimum": 0}
_ON_BEHALF = {"type": "object", "properties": {"userId": _TEXT, "reason": _TEXT}}
_TYPE_SETTINGS = {
    "algorithm": _TEXT,
    "rotationInterval": _MS,
    "warningThreshold": _MS,
    "maxLifetime": _MS,
}
_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/keys/generate"): {
        "type": "object",
        "required": ["type"],
        "properties": {"type": _TEXT, "metadata": _STRINGS, "userId": _TEXT},
    },
    ("POST", "/keys/{keyId}/rotate"): _ON_BEHALF,
    ("DELETE", "/keys/{keyId}"): _ON_BEHALF,
    ("POST", "/handles/generate"): {
        "type": "object",
        "required": ["type"],
        "properties": {"type": _TEXT, "context": _STRINGS, "userId": _TEXT},
    },
    ("POST", "/handles/validate"): {
        "type": "object",
        "required": ["handleId"],
        "properties": {
            "handleId": {"type": "string", "description": "the id returned by generate: a token"},
            "context": {
                "type": "object",
                "properties": {"ip": _TEXT, "userAgent": _TEXT},
                "additionalProperties": _TEXT,
            },
            "userId": _TEXT,
        },
    },
    ("POST", "/handles/{handleId}/rotate"): _ON_BEHALF,
    ("DELETE", "/handles/{handleId}"): _ON_BEHALF,
    ("PUT", "/config"): {
        "type": "object",
        "properties": {
            "keyTypes": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        **_TYPE_SETTINGS,
                        "keyLength": _COUNT,
                        "exportable": {"type": "boolean"},
                    },
                },
            },
            "handleTypes": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        **_TYPE_SETTINGS,
                        "handleLength": _COUNT,
                        "maxUsage": _COUNT,
                        "gracePeriod": _MS,
                    },
                },
            },
            "securityPolicies": {
                "type": "object",
                "properties": {
                    "preventReuse": {"type": "boolean"},
                    "enforceRotation": {"type": "boolean"},
                    "trackUsage": {"type": "boolean"},
                    "anomalyDetection": {"type": "boolean"},
                    "rateLimitPerHandle": _COUNT,
                    "maxConcurrentHandles": _COUNT,
                    "revokeOn": {"type": "array", "items": _TEXT},
                },
            },
            "userId": _TEXT,
            "reason": _TEXT,
            "etag": _TEXT,
        },
    },
}
_LIST_QUERY = [
    {"name": "type", "in": "query", "schema": _TEXT},
    {"name": "status", "in": "query", "schema": _TEXT},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
]
_ENVELOPE_ERROR = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean", "enum": [False]},
        "error": _TEXT,
        "code": _TEXT,
        "reason": _TEXT,
        "fieldViolations": {"type": "array", "items": _STRINGS},
        "timestamp": {"type": "string", "format": "date-time"},
    },
}


def add_paths(paths: dict[str, Any], schemas: dict[str, Any]) -> None:
    schemas["CompatError"] = _ENVELOPE_ERROR
    for route in TABLE:
        operation: dict[str, Any] = {
            "operationId": f"compat_{route.verb.lower()}_{_slug(route.path)}",
            "summary": route.summary,
            "tags": ["key-management (specification)"],
            "description": f"Served by {route.service.removeprefix('keyturn.v1.')}.{route.method}.",
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": _TEXT}
                for name in _parameters(route.path)
            ]
            + (_LIST_QUERY if route.result in ("keys", "handles") else []),
            "responses": {
                "200" if not route.path.endswith("/generate") else "201": {
                    "description": f"success, with {route.result} and timestamp",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "success": {"type": "boolean"},
                                    route.result: {},
                                    "timestamp": {"type": "string", "format": "date-time"},
                                },
                            }
                        }
                    },
                },
                "default": {
                    "description": "the specification's error shape",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/CompatError"}}
                    },
                },
            },
        }
        body = _BODIES.get((route.verb, route.path))
        if body is not None:
            operation["requestBody"] = {
                "required": route.verb != "DELETE",
                "content": {"application/json": {"schema": body}},
            }
        paths.setdefault(PREFIX + route.path, {})[route.verb.lower()] = operation


def _parameters(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _slug(path: str) -> str:
    return "_".join(p.strip("{}") for p in path.split("/") if p)
