"""The specification's REST API (/api/key-management), route by route, against a real
server: its paths, methods, camelCase fields and envelopes, mapped onto Keyturn's rules
(a generated handle's id is its token; lists and reads never show a token)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from keyturn_server.api.http.compat.routes import TABLE
from tests.harness import Harness
from tests.http_support import Answer, HttpClient

API = "/api/key-management"


@pytest.fixture
async def api(server: Harness) -> HttpClient:
    return HttpClient(server.http_url + API, server.admin_token)


def envelope(answer: Answer, field: str, status: int = 200) -> Any:
    assert answer.status == status, answer.text
    assert answer.body["success"] is True
    datetime.fromisoformat(answer.body["timestamp"])
    assert answer.body["timestamp"].endswith("Z")
    return answer.body[field]


def refused(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, answer.text
    body: dict[str, Any] = answer.body
    assert body["success"] is False and body["code"] == code and body["error"]
    datetime.fromisoformat(body["timestamp"])
    return body


async def issue(api: HttpClient, **context: str) -> dict[str, Any]:
    answer = await api.post(
        "/handles/generate", {"type": "workflow", "context": context, "userId": "user123"}
    )
    handle: dict[str, Any] = envelope(answer, "handle", 201)
    return handle


async def test_keys_generate_list_get_rotate_remove(api: HttpClient) -> None:
    key = envelope(
        await api.post(
            "/keys/generate",
            {"type": "encryption", "metadata": {"purpose": "data-encryption"}, "userId": "u1"},
        ),
        "key",
        201,
    )
    assert key["id"].startswith("key_") and key["status"] == "active"
    assert key["algorithm"] == "aes-256-gcm" and key["createdFor"] == "u1"
    assert key["metadata"] == {"purpose": "data-encryption"} and key["usageCount"] == 0
    assert envelope(await api.get(f"/keys/{key['id']}"), "key")["id"] == key["id"]
    rotated = envelope(
        await api.post(f"/keys/{key['id']}/rotate", {"userId": "u1", "reason": "drill"}), "key"
    )
    assert rotated["primaryVersion"] == 2 and len(rotated["versions"]) == 2
    removed = envelope(
        await api.delete(f"/keys/{key['id']}", {"userId": "u1", "reason": "retired"}), "key"
    )
    assert removed["status"] == "removed" and removed["destroyTime"]


async def test_list_keys_by_type_and_status_with_limit_and_offset(api: HttpClient) -> None:
    made = []
    for _ in range(5):
        made.append(envelope(await api.post("/keys/generate", {"type": "api"}), "key", 201)["id"])
    await api.post("/keys/generate", {"type": "session"})
    answer = await api.get(
        "/keys", params={"type": "api", "status": "active", "limit": "2", "offset": "1"}
    )
    assert answer.status == 200 and answer.body["success"] is True
    ordered = [k["id"] for k in (await api.get("/keys", params={"type": "api"})).body["keys"]]
    assert sorted(ordered) == sorted(made)
    assert [k["id"] for k in answer.body["keys"]] == ordered[1:3]
    assert (answer.body["total"], answer.body["limit"], answer.body["offset"]) == (5, 2, 1)
    everything = await api.get("/keys")
    assert everything.body["total"] == 6 and everything.body["limit"] == 50


async def test_statistics_routes_are_not_taken_for_ids(api: HttpClient) -> None:
    await api.post("/keys/generate", {"type": "api"})
    keys = envelope(await api.get("/keys/statistics"), "statistics")
    assert keys["total"] == 1 and keys["byType"]["api"]["total"] == 1
    handles = envelope(await api.get("/handles/statistics"), "statistics")
    assert handles["validations"] == 0


async def test_a_generated_handle_id_is_its_token_and_validates(api: HttpClient) -> None:
    handle = await issue(api, workflow="data-processing", session="session123")
    assert handle["id"].startswith("kt_workflow_") and handle["publicId"].startswith("hdl_")
    assert handle["context"] == {
        "workflow": "data-processing",
        "session": "session123",
    }
    validation = envelope(
        await api.post(
            "/handles/validate",
            {
                "handleId": handle["id"],
                "context": {"ip": "192.168.1.100", "userAgent": "MyApp/1.0"},
                "userId": "user123",
            },
        ),
        "validation",
    )
    assert validation["valid"] is True and validation["publicId"] == handle["publicId"]
    assert validation["remainingUses"] == 99
    read = envelope(await api.get(f"/handles/{handle['publicId']}"), "handle")
    assert read["boundIp"] == "192.168.1.100" and read["boundUserAgent"] == "MyApp/1.0"
    # The public id is no credential.
    by_public_id = envelope(
        await api.post("/handles/validate", {"handleId": handle["publicId"]}), "validation"
    )
    assert by_public_id["valid"] is False and by_public_id["reason"] == "malformed"


async def test_lists_and_reads_never_show_a_token(api: HttpClient) -> None:
    handle = await issue(api)
    token = handle["id"]
    listed = await api.get("/handles", params={"type": "workflow", "status": "active"})
    assert listed.status == 200 and token not in listed.text
    assert [h["id"] for h in listed.body["handles"]] == [handle["publicId"]]
    for name in (handle["publicId"], token):  # a read by public id or by token
        read = await api.get(f"/handles/{name}")
        assert envelope(read, "handle")["id"] == handle["publicId"] and token not in read.text


@pytest.mark.parametrize("by", ["token", "publicId"])
async def test_rotate_and_remove_take_the_public_id_or_the_token(api: HttpClient, by: str) -> None:
    handle = await issue(api)
    rotated = envelope(
        await api.post(
            f"/handles/{handle[by if by == 'publicId' else 'id']}/rotate",
            {"userId": "u", "reason": "drill"},
        ),
        "handle",
    )
    assert rotated["id"].startswith("kt_workflow_") and rotated["id"] != handle["id"]
    assert rotated["publicId"] == handle["publicId"] and rotated["previousValidUntil"]
    current = rotated["id"] if by == "token" else handle["publicId"]
    removed = envelope(await api.delete(f"/handles/{current}", {"userId": "u"}), "handle")
    assert removed["status"] == "revoked" and removed["id"] == handle["publicId"]
    again = await api.delete(f"/handles/{handle['publicId']}")
    assert refused(again, 400, "FAILED_PRECONDITION")["reason"] == "HANDLE_ALREADY_REVOKED"


async def test_health_overall_and_by_component(api: HttpClient) -> None:
    overall = envelope(await api.get("/health"), "health")
    assert overall["status"] == "serving"
    assert {c["name"] for c in overall["components"]} >= {"keys", "handles", "store"}
    for component in ("keys", "handles"):
        health = envelope(await api.get(f"/health/{component}"), "health")
        assert [c["name"] for c in health["components"]] == [component]
    refused(await api.get("/health/nothing"), 400, "INVALID_ARGUMENT")


async def test_config_in_milliseconds_and_updated_as_the_specification_sends_it(
    api: HttpClient,
) -> None:
    config = envelope(await api.get("/config"), "config")
    workflow = config["handleTypes"]["workflow"]
    assert workflow["rotationInterval"] == 30 * 60 * 1000 and workflow["maxUsage"] == 100
    assert config["keyTypes"]["encryption"]["keyLength"] == 32
    assert config["securityPolicies"]["rateLimitPerHandle"] == 100
    updated = envelope(
        await api.put(
            "/config",
            {
                "keyTypes": {
                    "custom": {
                        "algorithm": "sha256",
                        "keyLength": 32,
                        "rotationInterval": 86400000,
                        "warningThreshold": 3600000,
                        "maxLifetime": 2592000000,
                    }
                },
                "handleTypes": {
                    "custom": {
                        "algorithm": "sha256",
                        "handleLength": 32,
                        "rotationInterval": 3600000,
                        "warningThreshold": 300000,
                        "maxLifetime": 86400000,
                        "maxUsage": 1000,
                    }
                },
                "securityPolicies": {"rateLimitPerHandle": 50, "preventReuse": True},
                "userId": "admin1",
            },
        ),
        "config",
    )
    assert updated["keyTypes"]["custom"]["maxLifetime"] == 2592000000
    assert updated["handleTypes"]["custom"]["maxUsage"] == 1000
    assert updated["handleTypes"]["workflow"] == workflow  # merged, not replaced
    assert updated["securityPolicies"]["rateLimitPerHandle"] == 50
    custom = envelope(await api.post("/handles/generate", {"type": "custom"}), "handle", 201)
    assert custom["maxUsage"] == 1000


async def test_config_keeps_revoke_on_unless_the_body_gives_it(api: HttpClient) -> None:
    default = envelope(await api.get("/config"), "config")["securityPolicies"]["revokeOn"]
    assert default
    others = await api.put("/config", {"securityPolicies": {"trackUsage": False}})
    assert envelope(others, "config")["securityPolicies"]["revokeOn"] == default
    emptied = await api.put("/config", {"securityPolicies": {"revokeOn": []}})
    assert envelope(emptied, "config")["securityPolicies"]["revokeOn"] == []


@pytest.mark.parametrize(
    ("verb", "path", "body", "status", "code", "field"),
    [
        ("POST", "/keys/generate", {}, 400, "INVALID_ARGUMENT", "type"),
        ("POST", "/keys/generate", {"type": 7}, 400, "INVALID_ARGUMENT", "type"),
        ("POST", "/keys/generate", {"type": "nope"}, 400, "INVALID_ARGUMENT", "type"),
        (
            "POST",
            "/keys/generate",
            {"type": "api", "metadata": [1]},
            400,
            "INVALID_ARGUMENT",
            "metadata",
        ),
        ("POST", "/keys/generate", ["api"], 400, "INVALID_ARGUMENT", "body"),
        ("GET", "/keys/nope", None, 400, "INVALID_ARGUMENT", "key_id"),
        ("GET", "/keys/key_aaaaaaaaaaaaaaaa", None, 404, "NOT_FOUND", None),
        ("DELETE", "/keys/key_aaaaaaaaaaaaaaaa", None, 404, "NOT_FOUND", None),
        (
            "POST",
            "/keys/key_aaaaaaaaaaaaaaaa/rotate",
            {"reason": 5},
            400,
            "INVALID_ARGUMENT",
            "reason",
        ),
        ("GET", "/keys?limit=lots", None, 400, "INVALID_ARGUMENT", "limit"),
        ("GET", "/keys?offset=99999999", None, 400, "INVALID_ARGUMENT", "offset"),
        # isdigit() passed these and int() refused "²" (a 500) or read "٣" as 3.
        ("GET", "/keys?limit=²", None, 400, "INVALID_ARGUMENT", "limit"),
        ("GET", "/handles?offset=²", None, 400, "INVALID_ARGUMENT", "offset"),
        ("GET", "/handles?limit=٣", None, 400, "INVALID_ARGUMENT", "limit"),
        pytest.param(
            "GET",
            f"/keys?limit={'9' * 5000}",
            None,
            400,
            "INVALID_ARGUMENT",
            "limit",
            id="limit of 5000 digits (past int's)",
        ),
        (
            "POST",
            "/handles/validate",
            {"handleId": "kt_x", "context": {"ip": "10.0.0.1", "x": ["y"]}},
            400,
            "INVALID_ARGUMENT",
            "context.x",  # not "ip.x", the entry before it
        ),
        ("GET", "/keys?status=sleeping", None, 400, "INVALID_ARGUMENT", "status"),
        ("GET", "/handles?status=sleeping", None, 400, "INVALID_ARGUMENT", "status"),
        (
            "POST",
            "/handles/generate",
            {"type": "workflow", "context": {"a": {}}},
            400,
            "INVALID_ARGUMENT",
            "context.a",
        ),
        ("POST", "/handles/validate", {}, 400, "INVALID_ARGUMENT", "handleId"),
        ("GET", "/handles/hdl_aaaaaaaaaaaaaaaa", None, 404, "NOT_FOUND", None),
        ("GET", "/handles/kt_workflow_nope", None, 404, "NOT_FOUND", None),
        ("POST", "/handles/kt_workflow_nope/rotate", {}, 400, "INVALID_ARGUMENT", "token"),
        ("DELETE", "/handles/kt_workflow_nope", None, 404, "NOT_FOUND", None),
        ("PUT", "/config", {}, 400, "INVALID_ARGUMENT", "body"),
        (
            "PUT",
            "/config",
            {"keyTypes": {"x": {"keyLenght": 3}}},
            400,
            "INVALID_ARGUMENT",
            "keyTypes.x.keyLenght",
        ),
        (
            "PUT",
            "/config",
            {"keyTypes": {"x": {"gracePeriod": 5}}},  # a handle type's setting only
            400,
            "INVALID_ARGUMENT",
            "keyTypes.x.gracePeriod",
        ),
        (
            "PUT",
            "/config",
            {"handleTypes": {"x": {"rotationInterval": "1h"}}},
            400,
            "INVALID_ARGUMENT",
            "handleTypes.x.rotationInterval",
        ),
        (
            "PUT",
            "/config",
            {
                "handleTypes": {
                    "x": {
                        "algorithm": "sha256",
                        "handleLength": 32,
                        "rotationInterval": 10,
                        "warningThreshold": 5,
                        "maxLifetime": 20,
                        "maxUsage": 1,
                    }
                }
            },
            400,
            "INVALID_ARGUMENT",
            None,
        ),
        (
            "PUT",
            "/config",
            {"securityPolicies": {"rateLimitPerHandle": -1}},
            400,
            "INVALID_ARGUMENT",
            "securityPolicies.rateLimitPerHandle",
        ),
        (
            "PUT",
            "/config",
            {"securityPolicies": {"revokeOn": ["sneezing"]}},
            400,
            "INVALID_ARGUMENT",
            "securityPolicies.revokeOn",
        ),
        (
            "PUT",
            "/config",
            {"keyTypes": {"a.b": {"algorithm": "sha256"}}},
            400,
            "INVALID_ARGUMENT",
            "config.key_types.a.b",
        ),
        (
            "PUT",
            "/config",
            {"securityPolicies": {"trackUsage": True}, "etag": "old"},
            409,
            "ABORTED",
            None,
        ),
        ("GET", "/nothing", None, 404, "NOT_FOUND", None),
        ("PATCH", "/keys", {}, 405, "UNIMPLEMENTED", None),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_client_mistakes_are_4xx_in_the_specifications_error_shape(
    api: HttpClient,
    verb: str,
    path: str,
    body: Any,
    status: int,
    code: str,
    field: str | None,
) -> None:
    answer = await api.call(verb, path, body)
    error = refused(answer, status, code)
    if field is not None:
        assert field in {v["field"] for v in error["fieldViolations"]}, error


async def test_a_body_that_is_not_json_is_400(api: HttpClient) -> None:
    answer = await api.call(
        "POST", "/keys/generate", raw=b"{oops", headers={"Content-Type": "application/json"}
    )
    refused(answer, 400, "INVALID_ARGUMENT")


async def test_every_route_needs_a_token_unless_insecure_no_auth(server: Harness) -> None:
    anonymous = HttpClient(server.http_url + API)
    for route in TABLE:
        path = route.path.format(
            keyId="key_aaaaaaaaaaaaaaaa", handleId="hdl_aaaaaaaaaaaaaaaa", component="keys"
        )
        answer = await anonymous.call(route.verb, path, {} if route.verb != "GET" else None)
        assert refused(answer, 401, "UNAUTHENTICATED")["reason"] == "MISSING_CREDENTIALS"
    await server.restart(insecure_no_auth=True)
    open_api = HttpClient(server.http_url + API)
    key = envelope(await open_api.post("/keys/generate", {"type": "api"}), "key", 201)
    assert key["owner"] == "anonymous"


async def test_services_see_only_their_own_handles_here_too(server: Harness) -> None:
    alice = HttpClient(server.http_url + API, (await server.client_for("service", "alice")).token)
    bob = HttpClient(server.http_url + API, (await server.client_for("service", "bob")).token)
    handle = await issue(alice)
    for name in (handle["publicId"], handle["id"]):
        refused(await bob.get(f"/handles/{name}"), 404, "NOT_FOUND")
        refused(await bob.delete(f"/handles/{name}"), 404, "NOT_FOUND")
    assert (await bob.get("/handles")).body["handles"] == []


async def test_the_table_is_the_specifications_plus_one_read(api: HttpClient) -> None:
    spec = {
        ("POST", "/keys/generate"),
        ("GET", "/keys"),
        ("GET", "/keys/{keyId}"),
        ("POST", "/keys/{keyId}/rotate"),
        ("DELETE", "/keys/{keyId}"),
        ("GET", "/keys/statistics"),
        ("POST", "/handles/generate"),
        ("GET", "/handles"),
        ("POST", "/handles/validate"),
        ("POST", "/handles/{handleId}/rotate"),
        ("DELETE", "/handles/{handleId}"),
        ("GET", "/handles/statistics"),
        ("GET", "/health"),
        ("GET", "/health/{component}"),
        ("GET", "/config"),
        ("PUT", "/config"),
    }
    served = {(r.verb, r.path) for r in TABLE}
    assert served - spec == {("GET", "/handles/{handleId}")} and spec <= served
