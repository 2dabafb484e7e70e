"""The HTTP listener as operators configure it: --http-listen and KEYTURN_HTTP_LISTEN, TLS
and mutual TLS like gRPC, the default on loopback, /openapi.json; and the pure pieces it
is built from (path templates, query mapping), table by table."""

from __future__ import annotations

import argparse
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from google.protobuf import json_format

from keyturn.v1 import admin_pb2, events_pb2, keys_pb2
from keyturn_server.api.http import numerals, openapi
from keyturn_server.api.http.compat.routes import TABLE
from keyturn_server.api.http.jsonmap import request_from
from keyturn_server.api.http.rules import Router, routes_of
from keyturn_server.api.http.template import TemplateError, parse
from keyturn_server.domain.errors import InvalidArgument
from keyturn_server.flags import add_serve_arguments
from keyturn_server.settings import (
    DEFAULT_HTTP_LISTEN,
    Settings,
    SettingsError,
    resolve,
)
from tests.harness import Harness
from tests.http_support import HttpClient
from tests.test_auth import pki  # noqa: F401  (the fixture)

ROUTER = Router(routes_of(openapi.services()))


# --- flags -------------------------------------------------------------------------


def settings(*argv: str, env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return resolve(parser.parse_args(list(argv)), env or {})


@pytest.mark.parametrize(
    ("argv", "env", "listen", "default"),
    [
        ((), {}, (DEFAULT_HTTP_LISTEN,), True),
        (("--http-listen", "127.0.0.1:9000"), {}, ("127.0.0.1:9000",), False),
        (("--http-listen", "off"), {}, (), False),
        (("--http-listen", ""), {}, (), False),
        (("--http-listen", "[::1]:1", "--http-listen", ":2"), {}, ("[::1]:1", ":2"), False),
        ((), {"KEYTURN_HTTP_LISTEN": "[::1]:1, :2"}, ("[::1]:1", ":2"), False),
        ((), {"KEYTURN_HTTP_LISTEN": "off"}, (), False),
        (("--http-listen", "127.0.0.1:3"), {"KEYTURN_HTTP_LISTEN": "off"}, ("127.0.0.1:3",), False),
        ((), {"PORT": "3000"}, (DEFAULT_HTTP_LISTEN,), True),  # PORT stays gRPC's
    ],
)  # fmt: skip
def test_http_listen_flag_and_environment(
    argv: tuple[str, ...], env: dict[str, str], listen: tuple[str, ...], default: bool
) -> None:
    resolved = settings(*argv, env=env)
    assert (resolved.http_listen, resolved.http_listen_is_default) == (listen, default)


def test_insecure_no_auth_refuses_an_http_listener_off_loopback() -> None:
    with pytest.raises(SettingsError, match=r"0\.0\.0\.0:8080"):
        settings("--insecure-no-auth", "--http-listen", "0.0.0.0:8080")
    with pytest.raises(SettingsError, match="HOST:PORT"):
        settings("--http-listen", "nowhere")


def test_the_listener_rule_covers_http_like_grpc() -> None:
    """Production refuses plaintext HTTP off loopback; development says so loudly."""
    with pytest.raises(SettingsError, match=r"plaintext on 0\.0\.0\.0:8080 in production"):
        settings("--production", "--http-listen", "0.0.0.0:8080")
    warned = settings("--http-listen", "0.0.0.0:8080").warnings()
    assert any("PLAINTEXT HTTP ON 0.0.0.0:8080" in w for w in warned)
    assert settings("--production", "--http-listen", "0.0.0.0:8080", "--allow-plaintext")


async def test_a_taken_default_port_leaves_grpc_serving(server: Harness) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        await server.restart(http_listen=(address,), http_listen_is_default=True)
        assert server.app is not None and server.app.http is not None
        assert server.app.http.addresses == []
        await server.stop()
        with pytest.raises(OSError, match="--http-listen"):
            await server.start(http_listen=(address,), http_listen_is_default=False)


# --- TLS ---------------------------------------------------------------------------


async def test_https_with_a_bearer_token(server: Harness, pki: dict[str, Any]) -> None:  # noqa: F811
    paths = pki["paths"]
    await server.restart(tls_cert=paths["server_cert"], tls_key=paths["server_key"])
    assert server.http_url.startswith("https://")
    context = ssl.create_default_context(cafile=str(paths["ca"]))
    client = HttpClient(server.http_url.replace("127.0.0.1", "localhost"), server.admin_token)
    answer = await client.get("/v1/health", ssl=context)
    assert answer.status == 200 and answer.body["health"]["status"] == "SERVING_STATUS_SERVING"


async def test_mutual_tls_over_https_makes_the_configured_principal_the_caller(
    server: Harness,
    pki: dict[str, Any],  # noqa: F811
) -> None:
    paths = pki["paths"]
    identities = paths["ca"].parent / "identities.toml"
    identities.write_text(
        '[[identity]]\nname = "payments"\nrole = "service"\nuri = "spiffe://example.org/payments"\n'
    )
    await server.restart(
        tls_cert=paths["server_cert"],
        tls_key=paths["server_key"],
        client_ca=paths["ca"],
        client_identities=identities,
    )
    base = server.http_url.replace("127.0.0.1", "localhost")
    context = ssl.create_default_context(cafile=str(paths["ca"]))
    context.load_cert_chain(paths["client_cert"], paths["client_key"])
    client = HttpClient(base)
    key = await client.post("/v1/keys", {"type": "api"}, ssl=context)
    assert key.status == 200, key.text
    assert key.body["key"]["owner"] == "payments"
    compat = await HttpClient(base + "/api/key-management").get("/keys", ssl=context)
    assert compat.status == 200 and compat.body["total"] == 1
    without = ssl.create_default_context(cafile=str(paths["ca"]))
    with pytest.raises(Exception):  # noqa: B017, PT011  (the handshake is refused)
        await HttpClient(base, server.admin_token).get("/v1/health", ssl=without)


# --- OpenAPI -----------------------------------------------------------------------


async def test_openapi_is_served_fresh_and_names_every_route(server: Harness) -> None:
    served = await HttpClient(server.http_url).get("/openapi.json")
    assert served.status == 200 and served.headers["Content-Type"] == "application/json"
    committed = Path(openapi.__file__).with_name(openapi.FILE).read_text()
    assert served.body == json.loads(committed) == json.loads(openapi.render(openapi.build()))
    paths = served.body["paths"]
    for route in ROUTER.routes:
        path = route.template.text
        assert route.verb.lower() in paths[path], path
    for spec in TABLE:
        assert spec.verb.lower() in paths["/api/key-management" + spec.path], spec


# --- the pure pieces ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/keys", "/v1/keys", {}),
        ("/v1/keys/{key_id}", "/v1/keys/key_1", {"key_id": "key_1"}),
        ("/v1/keys/{key_id}", "/v1/keys/a%2Fb", {"key_id": "a/b"}),
        ("/v1/keys/{key_id}", "/v1/keys/a/b", None),
        ("/v1/keys/{key_id}:rotate", "/v1/keys/key_1:rotate", {"key_id": "key_1"}),
        ("/v1/keys/{key_id}:rotate", "/v1/keys/key_1", None),
        ("/v1/keys:statistics", "/v1/keys:statistics", {}),
        ("/v1/{name=projects/*/keys/*}", "/v1/projects/p/keys/k", {"name": "projects/p/keys/k"}),
        ("/v1/{name=files/**}", "/v1/files/a/b%20c", {"name": "files/a/b c"}),
        ("/v1/*/x", "/v1/anything/x", {}),
    ],
)
def test_path_templates(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert parse(template).match(path) == expected


@pytest.mark.parametrize("template", ["v1/keys", "/v1/{", "/v1/{1bad}", "/v1//x", "/v1/{a}}"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        parse(template)


def test_routes_prefer_the_verb_and_know_their_methods() -> None:
    found = ROUTER.match("POST", "/v1/keys/key_1:rotate")
    assert found is not None and found[0].rpc == "/keyturn.v1.KeyService/RotateKey"
    assert ROUTER.match("GET", "/v1/keys:statistics")[0].method.name == "GetKeyStatistics"  # type: ignore[index]
    assert ROUTER.allowed("/v1/keys") == ["GET", "POST"]
    assert ROUTER.match("PUT", "/v1/keys") is None


def route(verb: str, path: str) -> Any:
    found = ROUTER.match(verb, path)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("verb", "path", "query", "body", "expected"),
    [
        ("GET", "/v1/keys", [("pageSize", "5"), ("status", "KEY_STATUS_ACTIVE")], None,
         keys_pb2.ListKeysRequest(page_size=5, status=1)),
        ("GET", "/v1/keys", [("page_size", "5"), ("status", "2")], None,
         keys_pb2.ListKeysRequest(page_size=5, status=2)),
        ("GET", "/v1/keys/{k}/publicKey".replace("{k}", "key_1"), [("version", "3")], None,
         keys_pb2.GetPublicKeyRequest(key_id="key_1", version=3)),
        ("GET", "/v1/keys/key_1/publicKey", [("version", "0")], None,
         keys_pb2.GetPublicKeyRequest(key_id="key_1", version=0)),
        ("POST", "/v1/keys/key_1/versions/12:disable", [], {},
         keys_pb2.DisableKeyVersionRequest(key_id="key_1", version=12)),
        ("GET", "/v1/handles:watchExpiring", [("resumeAfter", "-1")], None,
         events_pb2.WatchExpiringRequest(resume_after=-1)),
        ("POST", "/v1/keys/key_1:encrypt", [], {"plaintext": "aGk=", "keyId": "ignored"},
         keys_pb2.EncryptRequest(key_id="key_1", plaintext=b"hi")),
        ("GET", "/v1/handles:watchExpiring",
         [("kinds", "EVENT_KIND_ROTATED"), ("kinds", "EVENT_KIND_EXPIRED"),
          ("deliverTokens", "true"), ("resumeAfter", "7")], None,
         events_pb2.WatchExpiringRequest(kinds=[2, 3], deliver_tokens=True, resume_after=7)),
        ("PATCH", "/v1/config", [("updateMask", "securityPolicies.trackUsage"), ("etag", "e")],
         {"securityPolicies": {"trackUsage": False}},
         admin_pb2.UpdateConfigRequest(
             config=admin_pb2.Config(security_policies=admin_pb2.SecurityPolicies(track_usage=False)),
             update_mask={"paths": ["security_policies.track_usage"]}, etag="e")),
        ("GET", "/v1/auditEvents", [("startTime", "2026-01-01T00:00:00Z")], None,
         admin_pb2.ListAuditEventsRequest(start_time={"seconds": 1767225600})),
    ],
)  # fmt: skip
def test_requests_from_path_query_and_body(
    verb: str, path: str, query: list[tuple[str, str]], body: Any, expected: Any
) -> None:
    matched, variables = route(verb, path)
    built = request_from(matched, variables, query, body)
    assert json_format.MessageToDict(built) == json_format.MessageToDict(expected)


@pytest.mark.parametrize(
    ("verb", "path", "query", "body", "field"),
    [
        ("GET", "/v1/keys", [("deliverTokens", "1")], None, "deliverTokens"),
        ("GET", "/v1/handles:watchExpiring", [("deliverTokens", "maybe")], None, "deliverTokens"),
        ("POST", "/v1/keys", [], "text", "body"),
        ("POST", "/v1/keys", [], {"metadata": {"a": 1}}, "metadata"),
        ("GET", "/v1/keys", [], {"type": "api"}, "body"),
        ("PATCH", "/v1/config", [("config", "x")], None, "config"),
        ("GET", "/v1/keys", [("type.inner", "x")], None, "type.inner"),
        ("GET", "/v1/keys", [("status", "²")], None, "status"),
        ("GET", "/v1/keys", [("status", "-" + "9" * 5000)], None, "status"),
        ("GET", "/v1/keys", [("status", "٣")], None, "status"),
        ("GET", "/v1/keys", [("pageSize", "\u0661\u0660")], None, "pageSize"),
        # Decimal digits only, as the path or query spells a resource: json_format reads
        # "1.0", "1e3" and "01" as 1, 1000 and 1 (grpc-gateway and ESP refuse them).
        ("GET", "/v1/keys/key_1/publicKey", [("version", "1.0")], None, "version"),
        ("GET", "/v1/keys/key_1/publicKey", [("version", "1e3")], None, "version"),
        ("GET", "/v1/keys/key_1/publicKey", [("version", "01")], None, "version"),
        ("GET", "/v1/keys/key_1/publicKey", [("version", "+1")], None, "version"),
        ("GET", "/v1/keys/key_1/publicKey", [("version", " 1")], None, "version"),
        ("GET", "/v1/keys/key_1/publicKey", [("version", "0x10")], None, "version"),
        ("GET", "/v1/keys/key_1/publicKey", [("version", "4294967296")], None, "version"),
        ("GET", "/v1/keys/key_1/publicKey", [("version", "-1")], None, "version"),
        ("POST", "/v1/keys/key_1/versions/1e3:disable", [], {}, "version"),
        ("POST", "/v1/keys/key_1/versions/1.0:disable", [], {}, "version"),
        ("GET", "/v1/keys", [("pageSize", "1.5")], None, "pageSize"),
        ("GET", "/v1/keys", [("pageSize", "2147483648")], None, "pageSize"),
        ("GET", "/v1/handles:watchExpiring", [("resumeAfter", "7.0")], None, "resumeAfter"),
    ],
)  # fmt: skip
def test_bad_parameters_name_the_field(
    verb: str, path: str, query: list[tuple[str, str]], body: Any, field: str
) -> None:
    matched, variables = route(verb, path)
    with pytest.raises(InvalidArgument) as refused:
        request_from(matched, variables, query, body)
    assert field in {v.field for v in refused.value.violations}


@pytest.mark.parametrize(
    ("text", "low", "high", "expected"),
    [
        ("0", 0, 10, 0),
        ("10", 0, 10, 10),
        ("11", 0, 10, None),
        ("-1", 0, 10, None),
        ("-2147483648", *numerals.INT32, -(2**31)),
        ("2147483648", *numerals.INT32, None),
        ("9223372036854775807", *numerals.INT64, 2**63 - 1),
        ("9223372036854775808", *numerals.INT64, None),
        ("0" * 30 + "1", *numerals.INT64, None),  # longer than the range's digits
        ("9" * 5000, *numerals.INT64, None),  # int() refuses past 4,300 digits
        ("²", 0, 10, None),  # isdigit() says yes, int() refuses it
        ("٣", 0, 10, None),  # int() reads 3
        ("--1", *numerals.INT32, None),
        ("+1", 0, 10, None),
        (" 1", 0, 10, None),
        ("1\n", 0, 10, None),
        ("1_0", 0, 100, None),  # int() reads 10
        ("", 0, 10, None),
    ],
)  # fmt: skip
def test_numbers_in_request_text_are_ascii_digits_in_range(
    text: str, low: int, high: int, expected: int | None
) -> None:
    assert numerals.integer(text, low, high) == expected


# --- what the listener says about itself ---------------------------------------------


async def test_no_answer_names_the_http_library_or_its_version(server: Harness) -> None:
    """A version in the Server header tells a scanner which advisories to try."""
    admin = HttpClient(server.http_url, server.admin_token)
    answers = [
        await admin.get("/v1/config"),  # a message
        await HttpClient(server.http_url).get("/v1/config"),  # an error (no token)
        await admin.get("/api/key-management/keys/statistics"),  # the specification's envelope
        await admin.get("/api/key-management/keys/nope"),  # and its error shape
        await admin.get("/no/such/route"),
    ]
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(
            server.http_url + "/v1/keys:watchExpiring",
            headers={"Authorization": f"Bearer {server.admin_token}"},
        ) as stream,
    ):
        served_by = [a.headers.get("Server", "") for a in answers] + [stream.headers["Server"]]
    assert [a.status for a in answers] == [200, 401, 200, 400, 404]
    assert served_by == ["keyturn"] * 6
