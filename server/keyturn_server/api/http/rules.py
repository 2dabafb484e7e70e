"""The HTTP routes of the API, read from the google.api.http options of the service
descriptors when the server starts: no route is written by hand, and a new RPC with a rule
is served over HTTP as soon as its stubs are regenerated."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, message_factory

from keyturn_server.api.http.template import Template, parse

VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    verb: str  # "GET", "POST", ...
    template: Template
    #: "" (no body), "*" (the whole request) or the name of the request field it fills.
    body: str
    method: descriptor.MethodDescriptor
    request_class: Any

    @functools.cached_property
    def rpc(self) -> str:
        """'/keyturn.v1.KeyService/GetKey', as gRPC, logs and metrics name it."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @functools.cached_property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)


def routes_of(services: Iterable[descriptor.ServiceDescriptor]) -> list[Route]:
    """Every binding (a rule and its additional_bindings) of every method."""
    found: list[Route] = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            request_class = message_factory.GetMessageClass(method.input_type)
            for binding in _bindings(rule):
                verb, path = _verb_and_path(binding, method)
                found.append(Route(verb.upper(), parse(path), binding.body, method, request_class))
    return found


def _bindings(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    yield from rule.additional_bindings


def _verb_and_path(rule: http_pb2.HttpRule, method: descriptor.MethodDescriptor) -> tuple[str, str]:
    pattern = rule.WhichOneof("pattern")
    if pattern in VERBS:
        return pattern, str(getattr(rule, pattern))
    if pattern == "custom":
        return rule.custom.kind, rule.custom.path
    raise ValueError(f"{method.full_name}: an HTTP rule without a path")


class Router:
    """Finds the route of a request: literal paths by dictionary, the others by their
    templates, most specific first."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        self._exact: dict[tuple[str, str], Route] = {}
        self._templated: list[Route] = []
        for route in self.routes:
            if route.template.literal:
                self._exact[(route.verb, route.template.text)] = route
            else:
                self._templated.append(route)
        # Longer templates (more literal text) before shorter ones: ".../{key_id}:rotate"
        # is tried before ".../{key_id}".
        self._templated.sort(key=lambda r: len(r.template.text), reverse=True)

    def match(self, verb: str, path: str) -> tuple[Route, dict[str, str]] | None:
        route = self._exact.get((verb, path))
        if route is not None:
            return route, {}
        for route in self._templated:
            if route.verb == verb:
                values = route.template.match(path)
                if values is not None:
                    return route, values
        return None

    def allowed(self, path: str) -> list[str]:
        """The verbs that some route accepts on ``path`` (for 405 and its Allow header)."""
        return sorted(
            {
                r.verb
                for r in self.routes
                if (r.template.literal and r.template.text == path)
                or (not r.template.literal and r.template.match(path) is not None)
            }
        )
