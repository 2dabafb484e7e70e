"""Every RPC over HTTP/JSON (/v1, transcoded from the google.api.http rules), against a
real server: status codes, proto3 JSON both ways, the AIP-193 error body with the same
ErrorInfo and BadRequest details as gRPC, and the same guard (tokens, roles, limits)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from keyturn_server.api.http.openapi import services
from keyturn_server.api.http.rules import Router, routes_of
from keyturn_server.domain import limits
from keyturn_server.process import memory
from tests.harness import Harness
from tests.http_support import Answer, HttpClient
from tests.test_auth import ALLOWED

ROUTER = Router(routes_of(services()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
async def http(server: Harness) -> HttpClient:
    return HttpClient(server.http_url, server.admin_token)


async def ok(answer: Answer, status: int = 200) -> Any:
    assert answer.status == status, answer.text
    return answer.body


async def test_every_annotated_rpc_answers_over_http(server: Harness, http: HttpClient) -> None:
    # Keys: the lifecycle and every use, through the AIP paths.
    key = (await ok(await http.post("/v1/keys", {"type": "encryption", "userId": "user123"})))[
        "key"
    ]
    key_id = key["id"]
    assert key["status"] == "KEY_STATUS_ACTIVE" and key["createdFor"] == "user123"
    assert (await ok(await http.get(f"/v1/keys/{key_id}")))["id"] == key_id
    listed = await ok(await http.get("/v1/keys", params={"type": "encryption", "pageSize": "5"}))
    assert [k["id"] for k in listed["keys"]] == [key_id] and listed["totalSize"] == "1"
    sealed = await ok(
        await http.post(
            f"/v1/keys/{key_id}:encrypt", {"plaintext": b64(b"card 4111"), "associatedData": ""}
        )
    )
    opened = await ok(
        await http.post(f"/v1/keys/{key_id}:decrypt", {"ciphertext": sealed["ciphertext"]})
    )
    assert base64.b64decode(opened["plaintext"]) == b"card 4111" and opened["usedPrimary"]
    rotated = await ok(await http.post(f"/v1/keys/{key_id}:rotate", {"reason": "drill"}))
    assert rotated["primaryVersion"] == 2
    disabled = await ok(
        await http.post(f"/v1/keys/{key_id}/versions/1:disable", {"reason": "leak"})
    )
    assert disabled["versions"][0]["state"] == "KEY_VERSION_STATE_DISABLED"
    enabled = await ok(await http.post(f"/v1/keys/{key_id}/versions/1:enable", {}))
    assert enabled["versions"][0]["state"] == "KEY_VERSION_STATE_ENABLED"
    removed = await ok(await http.delete(f"/v1/keys/{key_id}", params={"reason": "done"}))
    assert removed["status"] == "KEY_STATUS_REMOVED"
    restored = await ok(await http.post(f"/v1/keys/{key_id}:restore", {}))
    assert restored["status"] == "KEY_STATUS_ACTIVE"

    signing = (await ok(await http.post("/v1/keys", {"type": "signing"})))["key"]["id"]
    signed = await ok(await http.post(f"/v1/keys/{signing}:sign", {"data": b64(b"invoice")}))
    verified = await ok(
        await http.post(
            f"/v1/keys/{signing}:verify",
            {"data": b64(b"invoice"), "signature": signed["signature"]},
        )
    )
    assert verified["valid"] is True
    public = await ok(await http.get(f"/v1/keys/{signing}/publicKey", params={"version": "1"}))
    assert public["pem"].startswith("-----BEGIN PUBLIC KEY-----")

    session = (await ok(await http.post("/v1/keys", {"type": "session"})))["key"]["id"]
    mac = await ok(await http.post(f"/v1/keys/{session}:computeMac", {"data": b64(b"m")}))
    checked = await ok(
        await http.post(f"/v1/keys/{session}:verifyMac", {"data": b64(b"m"), "mac": mac["mac"]})
    )
    assert checked["valid"] is True
    exported = await ok(await http.post(f"/v1/keys/{session}:export", {"reason": "backup"}))
    assert len(base64.b64decode(exported["material"])) == 64
    statistics = await ok(await http.get("/v1/keys:statistics"))
    assert statistics["statistics"]["byType"]["encryption"]["total"] == "1"

    # Handles: issue, validate by token, rotate by id and by token, revoke.
    issued = await ok(
        await http.post("/v1/handles", {"type": "workflow", "context": {"purpose": "etl"}})
    )
    handle_id, token = issued["handle"]["id"], issued["token"]
    assert (await ok(await http.get(f"/v1/handles/{handle_id}")))["id"] == handle_id
    assert "token" not in (await ok(await http.get(f"/v1/handles/{handle_id}")))
    assert (await ok(await http.get("/v1/handles")))["handles"][0]["id"] == handle_id
    validation = (
        await ok(
            await http.post("/v1/handles:validate", {"token": token, "context": {"ip": "10.0.0.1"}})
        )
    )["validation"]
    assert validation["valid"] is True and validation["handleId"] == handle_id
    by_id = await ok(await http.post(f"/v1/handles/{handle_id}:rotate", {"reason": "drill"}))
    by_token = await ok(
        await http.post(
            "/v1/handles:rotate", {"token": by_id["token"], "context": {"ip": "10.0.0.1"}}
        )
    )
    assert by_token["handle"]["generation"] == 3
    revoked = await ok(await http.delete(f"/v1/handles/{handle_id}"))
    assert revoked["status"] == "HANDLE_STATUS_REVOKED"
    refused = (await ok(await http.post("/v1/handles:validate", {"token": token})))["validation"]
    assert refused["valid"] is False  # a refusal is data, printed even at its default
    handle_stats = await ok(await http.get("/v1/handles:statistics"))
    assert handle_stats["statistics"]["validationsSucceeded"] == "1"

    # Admin: health, configuration with its etag, audit log, access tokens.
    health = await ok(await http.get("/v1/health"))
    assert health["health"]["status"] == "SERVING_STATUS_SERVING"
    keys_health = await ok(await http.get("/v1/health/keys"))
    assert [c["name"] for c in keys_health["health"]["components"]] == ["keys"]
    config = await ok(await http.get("/v1/config"))
    patched = await ok(
        await http.patch(
            "/v1/config",
            {"securityPolicies": {"rateLimitPerHandle": 7}},
            params={"updateMask": "securityPolicies.rateLimitPerHandle", "etag": config["etag"]},
        )
    )
    assert patched["securityPolicies"]["rateLimitPerHandle"] == 7
    assert patched["etag"] != config["etag"]
    audit = await ok(
        await http.get("/v1/auditEvents", params={"action": "key.generate", "pageSize": "2"})
    )
    assert audit["events"][0]["action"] == "key.generate"
    assert (await ok(await http.get("/v1/auditEvents:verify")))["valid"] is True
    created = await ok(await http.post("/v1/accessTokens", {"name": "ci", "role": "ROLE_SERVICE"}))
    assert created["token"].startswith("kt_api-access_")
    names = [t["name"] for t in (await ok(await http.get("/v1/accessTokens")))["accessTokens"]]
    assert "ci" in names
    gone = await ok(await http.post("/v1/accessTokens/ci:revoke", {"reason": "test"}))
    assert gone["revokeTime"]

    # The two streams answer too (their behaviour is in test_http_sse.py).
    for path in ("/v1/keys:watchExpiring", "/v1/handles:watchExpiring"):
        answer = await http.get(path, params={"resumeAfter": "999999"})
        assert answer.status == 400 and answer.error["status"] == "OUT_OF_RANGE"

    matched = [ROUTER.match(verb, path) for verb, path in http.sent]
    routes = {(m[0].verb, m[0].template.text) for m in matched if m is not None}
    assert routes == {(r.verb, r.template.text) for r in ROUTER.routes}


def test_every_rpc_has_an_http_rule() -> None:
    annotated = {r.rpc.removeprefix("/keyturn.v1.") for r in ROUTER.routes}
    assert annotated == set(ALLOWED)


async def test_input_takes_either_field_name_style(server: Harness, http: HttpClient) -> None:
    for body in ({"type": "api", "userId": "a"}, {"type": "api", "user_id": "b"}):
        key = (await ok(await http.post("/v1/keys", body)))["key"]
        assert key["createdFor"] == body.get("userId", body.get("user_id"))
    listed = await ok(await http.get("/v1/keys", params={"page_size": "1"}))
    assert len(listed["keys"]) == 1 and listed["nextPageToken"]


@pytest.mark.parametrize(
    ("verb", "path", "kwargs", "status", "code", "field"),
    [
        ("GET", "/v1/keys/nope", {}, 400, "INVALID_ARGUMENT", "key_id"),
        ("GET", "/v1/keys/key_aaaaaaaaaaaaaaaa", {}, 404, "NOT_FOUND", None),
        ("POST", "/v1/keys", {"body": {"type": 5}}, 400, "INVALID_ARGUMENT", "type"),
        ("POST", "/v1/keys", {"body": {"tipe": "api"}}, 400, "INVALID_ARGUMENT", "tipe"),
        ("POST", "/v1/keys", {"body": ["api"]}, 400, "INVALID_ARGUMENT", "body"),
        ("POST", "/v1/keys", {"body": {"type": "nope"}}, 400, "INVALID_ARGUMENT", "type"),
        (
            "POST",
            "/v1/keys",
            {"raw": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "INVALID_ARGUMENT",
            "body",
        ),
        (
            "POST",
            "/v1/keys",
            {"raw": b'{"type": "api"}', "headers": {"Content-Type": "text/plain"}},
            400,
            "INVALID_ARGUMENT",
            "Content-Type",
        ),
        ("GET", "/v1/keys", {"params": {"pageSize": "many"}}, 400, "INVALID_ARGUMENT", "pageSize"),
        ("GET", "/v1/keys", {"params": {"color": "red"}}, 400, "INVALID_ARGUMENT", "color"),
        ("GET", "/v1/keys", {"params": {"pageSize": "-1"}}, 400, "INVALID_ARGUMENT", "page_size"),
        ("GET", "/v1/keys", {"params": {"status": "NOPE"}}, 400, "INVALID_ARGUMENT", "status"),
        # isdigit() passed these and int() refused "²" and "--1" (a 500) or read "٣" as 3.
        ("GET", "/v1/keys", {"params": {"status": "²"}}, 400, "INVALID_ARGUMENT", "status"),
        ("GET", "/v1/keys", {"params": {"status": "--1"}}, 400, "INVALID_ARGUMENT", "status"),
        ("GET", "/v1/keys", {"params": {"status": "٣"}}, 400, "INVALID_ARGUMENT", "status"),
        ("GET", "/v1/keys", {"params": {"pageSize": "٣"}}, 400, "INVALID_ARGUMENT", "pageSize"),
        pytest.param(
            "GET",
            "/v1/keys",
            {"params": {"status": "9" * 5000}},
            400,
            "INVALID_ARGUMENT",
            "status",
            id="status of 5000 digits (past int's)",
        ),
        (
            "GET",
            "/v1/handles:watchExpiring",
            {"params": {"kinds": "²"}},
            400,
            "INVALID_ARGUMENT",
            "kinds",
        ),
        ("GET", "/v1/keys", {"body": {"x": 1}}, 400, "INVALID_ARGUMENT", "body"),
        (
            "GET",
            "/v1/handles:watchExpiring",
            {"headers": {"Last-Event-ID": "abc"}},
            400,
            "INVALID_ARGUMENT",
            "Last-Event-ID",
        ),
        ("POST", "/v1/handles:rotate", {"body": {}}, 400, "INVALID_ARGUMENT", "target"),
        ("DELETE", "/v1/handles/hdl_aaaaaaaaaaaaaaaa", {}, 404, "NOT_FOUND", None),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_client_mistakes_are_4xx_with_the_grpc_details(
    http: HttpClient,
    verb: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    answer = await http.call(verb, path, **kwargs)
    assert answer.status == status, answer.text
    assert answer.error["status"] == code and answer.error["code"] == status
    assert answer.detail("ErrorInfo")["domain"] == "keyturn.dev"
    if field is not None:
        assert field in answer.violations


async def test_a_body_naming_a_member_twice_is_refused_on_both_apis(
    server: Harness, http: HttpClient
) -> None:
    """Which of two values counts is a parser's choice (orjson and json keep the last; a
    proxy in front may keep the first): protobuf's JSON parsers refuse such a body, and
    so does Keyturn, before anything runs."""
    json_ = {"Content-Type": "application/json"}
    before = (await ok(await http.get("/v1/keys"))).get("keys", [])
    answers = [
        await http.call("POST", "/v1/keys", raw=b'{"type":"api","type":"signing"}', headers=json_),
        await http.call(
            "POST",
            "/api/key-management/keys/generate",
            raw=b'{"type":"api","metadata":{"a":"1","a":"2"}}',
            headers=json_,
        ),
    ]
    for answer in answers:
        assert answer.status == 400, answer.text
        assert "twice in one object" in answer.text, answer.text
    after = (await ok(await http.get("/v1/keys"))).get("keys", [])
    assert after == before  # nothing was made


async def test_a_body_over_the_request_limit_is_refused(http: HttpClient) -> None:
    answer = await http.post("/v1/keys", {"type": "api", "userId": "x" * limits.MAX_REQUEST})
    assert answer.status == 400 and answer.reason == "BODY_TOO_LARGE"
    # Sent in chunks (no Content-Length), it is refused as it passes the limit.
    chunked = await http.call(
        "POST",
        "/v1/keys",
        raw=_chunks(b'{"type": "api", "userId": "' + b"x" * limits.MAX_REQUEST + b'"}'),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status == 400 and chunked.reason == "BODY_TOO_LARGE"


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 16384):
        yield body[start : start + 16384]


async def test_unknown_paths_and_verbs(http: HttpClient) -> None:
    missing = await http.get("/v1/nothing")
    assert missing.status == 404 and missing.error["status"] == "NOT_FOUND"
    wrong = await http.call("PUT", "/v1/keys")
    assert wrong.status == 405 and wrong.headers["Allow"] == "GET, POST"
    elsewhere = await http.get("/")
    assert elsewhere.status == 404


@pytest.mark.parametrize(
    ("verb", "path"),
    [
        ("POST", "/v1/handles/hdl_aaaaaaaaaaaaaaaa:remove"),
        ("PUT", "/v1/keys"),
        ("OPTIONS", "/v1/keys"),
        ("DELETE", "/v1/health"),
    ],
)
async def test_a_known_path_with_another_verb_is_405_in_its_body_too(
    http: HttpClient, verb: str, path: str
) -> None:
    """AIP-193: the body's code is the HTTP status. It said 400 INVALID_ARGUMENT under a
    405; grpc-gateway names a method a path does not take UNIMPLEMENTED."""
    answer = await http.call(verb, path)
    assert answer.status == 405 and answer.headers["Allow"]
    assert answer.error["code"] == 405, answer.error
    assert answer.error["status"] == "UNIMPLEMENTED", answer.error


SENT = "S" * 200


@pytest.mark.parametrize(
    ("verb", "path", "body", "field"),
    [
        ("POST", "/v1/keys", {"type": "api", "metadata": {"a": 12}}, "metadata"),
        ("POST", "/v1/keys", {"type": "api", "metadata": [SENT]}, "metadata"),
        ("POST", "/v1/keys", {"type": ["x"]}, "type"),
        ("POST", "/v1/handles:validate", {"token": 5}, "token"),
        ("POST", "/v1/handles:validate", {"token": "x", "context": [SENT]}, "context"),
        ("POST", "/v1/keys/key_aaaaaaaaaaaaaaaa:encrypt",
         {"plaintext": "aGk=", "associatedData": {"x": SENT}}, "associatedData"),
        ("PATCH", "/v1/config",
         {"securityPolicies": {"trackUsage": SENT}}, "config.securityPolicies.trackUsage"),
        ("PATCH", "/v1/config", {"securityPolicies": {"rateLimitPerHandle": SENT}},
         "config.securityPolicies.rateLimitPerHandle"),
        ("PATCH", "/v1/config", {"keyTypes": {"x": {"keyLength": "many"}}}, "config.keyTypes"),
        ("POST", "/v1/accessTokens", {"name": "x", "role": SENT}, "role"),
        ("POST", "/v1/accessTokens", {"name": "x", "ttl": SENT}, "ttl"),
        ("POST", "/v1/handles", {"type": "api", SENT: 1}, SENT[:64]),
        ("GET", "/v1/auditEvents?startTime=" + SENT, None, "start_time"),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)  # fmt: skip
async def test_a_body_value_of_the_wrong_kind_is_refused_on_its_field_in_plain_words(
    http: HttpClient, verb: str, path: str, body: Any, field: str
) -> None:
    """json_format's own text reached the caller, on 'body': Python's words ("expected
    string or bytes-like object, got 'int'", "unsupported operand type(s) for +", "invalid
    literal for int() with base 10"), the request's proto name, and a repr of up to 300
    characters of what was sent (the limit is 64)."""
    answer = await http.call(verb, path, body)
    assert answer.status == 400, answer.text
    fields = answer.violations
    assert any(f.startswith(field) for f in fields), fields
    for text in (answer.error["message"], *fields.values()):
        for internal in ("bytes-like", "operand", "int()", "Request", "['", "got '"):
            assert internal not in text, text
        assert "S" * 65 not in text, text


async def test_bytes_are_read_only_from_base64_that_means_them(http: HttpClient) -> None:
    """json_format decodes base64 as Python does, dropping what is not base64: "aGk=EVIL",
    "aGk=!!!" and "a Gk=" were all the bytes "hi", so a MAC over "hi" verified data that
    a gateway, a log or the caller's own code reads as something else (grpc-gateway
    refuses them). Standard and URL-safe alphabets, padded or not, are what proto3 JSON
    allows."""
    key_id = (await ok(await http.post("/v1/keys", {"type": "session"})))["key"]["id"]
    mac = (await ok(await http.post(f"/v1/keys/{key_id}:computeMac", {"data": "aGk="})))["mac"]
    for sent in ("aGk=EVIL", "aGk=!!!", "a Gk=", "aGk=aGk=", "aG=", "aGk==", "a+G-k"):
        refused = await http.post(f"/v1/keys/{key_id}:verifyMac", {"data": sent, "mac": mac})
        assert refused.status == 400 and "data" in refused.violations, (sent, refused.text)
    for same in ("aGk=", "aGk"):
        verified = await ok(
            await http.post(f"/v1/keys/{key_id}:verifyMac", {"data": same, "mac": mac})
        )
        assert verified["valid"], same
    url_safe = b64(b"\xfb\xff").replace("+", "-").replace("/", "_")
    sealed = await ok(await http.post(f"/v1/keys/{key_id}:computeMac", {"data": url_safe}))
    assert sealed["mac"]


@pytest.mark.parametrize("spelled", ["1.0", "1e0", "01", "+1"])
async def test_a_version_in_a_path_is_read_only_as_decimal_digits(
    http: HttpClient, spelled: str
) -> None:
    """A resource name is spelled one way (AIP-122): "/versions/1.0" named version 1 and
    disabled it, as "1e3" named version 1000."""
    key_id = (await ok(await http.post("/v1/keys", {"type": "encryption"})))["key"]["id"]
    await ok(await http.post(f"/v1/keys/{key_id}:rotate", {}))
    refused = await http.post(f"/v1/keys/{key_id}/versions/{spelled}:disable", {})
    assert refused.status == 400 and "version" in refused.violations, refused.text
    assert "DisableKeyVersionRequest" not in refused.text  # json_format named the proto
    key = await ok(await http.get(f"/v1/keys/{key_id}"))
    assert [v["state"] for v in key["versions"]] == ["KEY_VERSION_STATE_ENABLED"] * 2


async def test_a_path_that_matches_no_route_is_not_quoted_back(http: HttpClient) -> None:
    """A path may hold a handle token (the specification's routes take one in place of an
    id), and a mistyped one still does: the 404 or 405 names no part of it, for a proxy
    that logs error bodies or a client that prints them."""
    token = (await ok(await http.post("/v1/handles", {"type": "api"})))["token"]
    for verb, path in (
        ("POST", f"/v1/handles/{token}:validat"),
        ("PUT", f"/v1/handles/{token}"),
        ("GET", f"/api/key-management/handles/{token}/usage"),
        ("PUT", f"/api/key-management/handles/{token}"),
        ("GET", f"/{token}"),
    ):
        answer = await http.call(verb, path)
        assert answer.status in (404, 405), (verb, answer.status)
        assert token not in answer.text, (verb, answer.text)
        assert token not in str(answer.headers), (verb, answer.headers)


async def test_stale_etag_is_409_aborted(http: HttpClient) -> None:
    answer = await http.patch(
        "/v1/config",
        {"securityPolicies": {"trackUsage": True}},
        params={"updateMask": "securityPolicies.trackUsage", "etag": "stale"},
    )
    assert answer.status == 409 and answer.error["status"] == "ABORTED"


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'Bearer realm="keyturn"'),
        ("Basic abc", 'Bearer realm="keyturn", error="invalid_request"'),
        ("Bearer kt_api-access_nonsense", 'Bearer realm="keyturn", error="invalid_token"'),
    ],
)
@pytest.mark.parametrize("path", ["/v1/keys", "/api/key-management/keys"])
async def test_a_401_says_how_to_authenticate(
    server: Harness, authorization: str | None, challenge: str, path: str
) -> None:
    """RFC 9110: a 401 carries WWW-Authenticate; RFC 6750 says which: a Bearer challenge,
    with no error code when no credentials were sent."""
    headers = {"Authorization": authorization} if authorization else {}
    answer = await HttpClient(server.http_url).get(path, headers=headers)
    assert answer.status == 401
    assert answer.headers.get("WWW-Authenticate") == challenge, answer.headers


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "MISSING_CREDENTIALS"),
        ("Basic abc", "MALFORMED_AUTHORIZATION"),
        ("Bearer kt_api-access_nonsense", None),
    ],
)
async def test_every_route_needs_a_valid_token(
    server: Harness, authorization: str | None, reason: str | None
) -> None:
    client = HttpClient(server.http_url)
    headers = {"Authorization": authorization} if authorization else {}
    for route in ROUTER.routes:
        path = route.template.text.replace("{key_id}", "key_aaaaaaaaaaaaaaaa")
        path = path.replace("{handle_id}", "hdl_aaaaaaaaaaaaaaaa")
        path = path.replace("{component}", "keys").replace("{name}", "ci")
        path = path.replace("{version}", "1")
        answer = await client.call(route.verb, path, {} if route.body else None, headers=headers)
        assert answer.status == 401, (route.verb, path, answer.text)
        assert answer.error["status"] == "UNAUTHENTICATED"
        if reason:
            assert answer.reason == reason


@pytest.mark.parametrize("role", ["operator", "service", "auditor"])
async def test_role_matrix_over_http(server: Harness, role: str) -> None:
    """The same rights as over gRPC (tests/test_auth.py's ALLOWED table)."""
    caller = await server.client_for(role)
    client = HttpClient(server.http_url, caller.token)
    for route in ROUTER.routes:
        if route.streaming:
            continue
        path = route.template.text.replace("{key_id}", "key_aaaaaaaaaaaaaaaa")
        path = path.replace("{handle_id}", "hdl_aaaaaaaaaaaaaaaa")
        path = path.replace("{component}", "keys").replace("{name}", "nobody")
        path = path.replace("{version}", "1")
        answer = await client.call(route.verb, path, {} if route.body else None)
        allowed = role in ALLOWED[route.rpc.removeprefix("/keyturn.v1.")]
        assert (answer.status != 403) == allowed, (role, route.rpc, answer.text)


async def test_the_caller_limit_is_shared_with_grpc_and_says_when_to_retry(
    server: Harness,
) -> None:
    await server.restart(caller_rate_limit=1.0, caller_burst=2)
    client = HttpClient(server.http_url, server.admin_token)
    statuses = [(await client.get("/v1/config")).status for _ in range(2)]
    assert statuses == [200, 200]
    limited = await client.get("/v1/config")
    assert limited.status == 429 and limited.reason == "CALLER_RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1
    server.clock.advance(timedelta(seconds=1))
    assert (await client.get("/v1/config")).status == 200


async def test_http_calls_are_counted_and_logged_like_rpcs(
    server: Harness, http: HttpClient, logs_hold_no_secrets: Any
) -> None:
    await ok(await http.post("/v1/keys", {"type": "api"}))
    await http.get("/v1/keys/key_aaaaaaaaaaaaaaaa")
    assert server.app is not None and server.app.services is not None
    stats = server.app.services.stats
    assert stats.requests["keyturn.v1.KeyService"] == 2
    assert stats.errors["keyturn.v1.KeyService"] == 1
    lines = [line for line in logs_hold_no_secrets.getvalue().splitlines() if '"access"' in line]
    assert any('"/keyturn.v1.KeyService/GenerateKey"' in x and '"http"' in x for x in lines)
    assert any('"NOT_FOUND"' in line for line in lines)


async def test_connections_read_below_the_size_the_allocator_maps_apart(
    server: Harness, http: HttpClient
) -> None:
    """asyncio read 256 KiB at a time, allocating a buffer of that size for every read,
    and the server maps buffers of LARGE_ALLOCATION and up apart (process/memory.py): every
    request paid an mmap and an munmap, a quarter of an HTTP validation's CPU (109 against
    81 µs, bench.http_ab). Reads stay below it now; a body larger than one read still
    arrives whole."""
    key_id = (await ok(await http.post("/v1/keys", {"type": "encryption"})))["key"]["id"]
    plaintext = os.urandom(limits.MAX_DATA)  # its JSON body takes several reads
    sealed = await ok(await http.post(f"/v1/keys/{key_id}:encrypt", {"plaintext": b64(plaintext)}))
    opened = await ok(
        await http.post(f"/v1/keys/{key_id}:decrypt", {"ciphertext": sealed["ciphertext"]})
    )
    assert base64.b64decode(opened["plaintext"]) == plaintext
    assert server.app is not None and server.app.http is not None
    runner = server.app.http._runner  # the listener's open connections
    assert runner is not None and runner.server is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.http_url + "/openapi.json") as answer,
    ):
        assert answer.status == 200
        sizes = {h.transport.max_size for h in runner.server.connections if h.transport}
    assert sizes and max(sizes) < memory.LARGE_ALLOCATION, sizes


async def test_no_answer_may_be_stored_by_a_cache(server: Harness, http: HttpClient) -> None:
    """Answers carry secrets (a handle's token, revealed or exported material, a rotated
    token on a watch) and what a caller may see: as Vault's do, each one says
    Cache-Control: no-store, so that no browser or proxy keeps a copy. Before, the JSON
    answers said nothing, and the event stream said no-cache, which lets a cache store."""
    made = await http.post("/v1/keys", {"type": "session", "reveal": True})
    key_id = (await ok(made))["key"]["id"]
    answers = {
        "revealed": made,
        "exported": await http.post(f"/v1/keys/{key_id}:export", {"reason": "handover"}),
        "issued": await http.post("/v1/handles", {"type": "session"}),
        "issued (specification)": await http.post(
            "/api/key-management/handles", {"type": "session"}
        ),
        "read": await http.get(f"/v1/keys/{key_id}"),
        "refused": await http.get("/v1/keys/key_aaaaaaaaaaaaaaaa"),
    }
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(
            server.http_url + "/v1/handles:watchExpiring",
            params={"deliverTokens": "true"},
            headers={"Authorization": f"Bearer {server.admin_token}"},
        ) as stream,
    ):
        watched = stream.headers.get("Cache-Control")
    stored = {name: a.headers.get("Cache-Control") for name, a in answers.items()}
    assert stored == dict.fromkeys(answers, "no-store")
    assert watched == "no-store"
