"""OpenAPI 3 for the HTTP listener, generated from the service descriptors and their
google.api.http rules (the same routes the transcoder serves), plus the specification's
compatibility routes.

``scripts/openapi.py`` writes the document next to this module (``openapi.json``, package
data) at build time; CI regenerates it and fails when the committed copy is stale, like
the stubs. The server serves the committed copy at /openapi.json.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from google.protobuf import descriptor

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server.api.http.rules import Route, routes_of

FILE = "openapi.json"
_F = descriptor.FieldDescriptor
_INT32 = {_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32}
_UINT32 = {_F.TYPE_UINT32, _F.TYPE_FIXED32}
_INT64 = {_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64, _F.TYPE_UINT64, _F.TYPE_FIXED64}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "description": 'Seconds with an \'s\' suffix, e.g. "3600s" or "0.5s".',
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": 'Comma-separated field paths, e.g. "handleTypes.blink".',
    },
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}


def services() -> list[descriptor.ServiceDescriptor]:
    return [
        keys_pb2.DESCRIPTOR.services_by_name["KeyService"],
        handles_pb2.DESCRIPTOR.services_by_name["HandleService"],
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
    ]


def document_bytes() -> bytes:
    """The committed document, as served."""
    return (resources.files(__package__) / FILE).read_bytes()


def build() -> dict[str, Any]:
    # Imported here: the compatibility layer imports the transcoder, which needs no OpenAPI.
    from keyturn_server.api.http.compat import openapi as compat

    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for route in routes_of(services()):
        operation = _operation(route, schemas)
        paths.setdefault(_openapi_path(route), {})[route.verb.lower()] = operation
    schemas["Error"] = _ERROR
    compat.add_paths(paths, schemas)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Keyturn",
            "version": "v1",
            "description": (
                "Keys and rotating workflow handles over HTTP/JSON. /v1 is transcoded from "
                "the gRPC API (proto3 JSON, AIP-193 errors); /api/key-management is the "
                "original specification's REST API (docs/rest-compat.md)."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=False) + "\n"


def _openapi_path(route: Route) -> str:
    text = route.template.text
    for name in route.template.variables:
        start = text.index("{" + name)
        end = text.index("}", start)
        text = text[:start] + "{" + name + "}" + text[end + 1 :]
    return text


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    method = route.method
    request = method.input_type
    bound = set(route.template.variables)
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in route.template.variables
    ]
    if route.body != "*":
        for field in request.fields:
            if field.name in bound or field.name == route.body:
                continue
            schema = _query_schema(field)
            if schema is not None:
                parameters.append({"name": field.json_name, "in": "query", "schema": schema})
    operation: dict[str, Any] = {
        "operationId": f"{method.containing_service.name}_{method.name}",
        "summary": f"{method.containing_service.name}.{method.name}",
        "tags": [method.containing_service.name],
        "parameters": parameters,
    }
    if route.body:
        if route.body == "*":
            schema = _message_ref(request, schemas)
        else:
            schema = _field_schema(request.fields_by_name[route.body], schemas)
        operation["requestBody"] = {
            "required": route.body != "*",
            "content": {"application/json": {"schema": schema}},
        }
    if route.streaming:
        ok: dict[str, Any] = {
            "description": (
                "Server-Sent Events: each data line is one "
                f"{method.output_type.name} (proto3 JSON); id is its sequence. Resume with "
                "Last-Event-ID or resumeAfter; heartbeats are comments. A browser's "
                "EventSource may pass its token as access_token."
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
        operation["parameters"].append(
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}}
        )
        _message_ref(method.output_type, schemas)
    else:
        ok = {
            "description": method.output_type.name,
            "content": {"application/json": {"schema": _message_ref(method.output_type, schemas)}},
        }
    operation["responses"] = {
        "200": ok,
        "default": {
            "description": "google.rpc.Status as AIP-193 JSON",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    }
    return operation


def _query_schema(field: descriptor.FieldDescriptor) -> dict[str, Any] | None:
    """Scalars, enums, repeated scalars and string-valued well-known types only."""
    if field.message_type is not None:
        known = _WELL_KNOWN.get(field.message_type.full_name)
        if known is None or known.get("type") != "string":
            return None
        schema: dict[str, Any] = dict(known)
    else:
        schema = _scalar(field)
    if field.is_repeated:
        return {"type": "array", "items": schema}
    return schema


def _scalar(field: descriptor.FieldDescriptor) -> dict[str, Any]:
    kind = field.type
    if kind == _F.TYPE_BOOL:
        return {"type": "boolean"}
    if kind in _INT32:
        return {"type": "integer", "format": "int32"}
    if kind in _UINT32:
        return {"type": "integer", "format": "int32", "minimum": 0}
    if kind in _INT64:
        return {"type": "string", "format": "int64", "pattern": r"^-?[0-9]+$"}
    if kind in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        return {"type": "number"}
    if kind == _F.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    if kind == _F.TYPE_ENUM:
        assert field.enum_type is not None
        return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    return {"type": "string"}


def _field_schema(field: descriptor.FieldDescriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _field_schema(value, schemas)}
    if field.message_type is not None:
        item = _message_ref(field.message_type, schemas)
    else:
        item = _scalar(field)
    if field.is_repeated:
        return {"type": "array", "items": item}
    return item


def _message_ref(message: descriptor.Descriptor, schemas: dict[str, Any]) -> dict[str, Any]:
    known = _WELL_KNOWN.get(message.full_name)
    if known is not None:
        return dict(known)
    name = message.full_name.removeprefix("keyturn.v1.").replace(".", "_")
    if name not in schemas:
        schemas[name] = {}  # placeholder: recursive types refer to themselves
        schemas[name] = {
            "type": "object",
            "properties": {
                field.json_name: _field_schema(field, schemas) for field in message.fields
            },
        }
    return {"$ref": f"#/components/schemas/{name}"}


_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status"},
                "message": {"type": "string"},
                "status": {"type": "string", "description": "The gRPC code, e.g. NOT_FOUND"},
                "details": {"type": "array", "items": _WELL_KNOWN["google.protobuf.Any"]},
            },
        }
    },
}
