"""Development shortcuts that must not become ways in: --insecure-no-auth makes every
caller an anonymous admin, which must not mint access tokens that keep working once the
server runs with authentication again, and it says so loudly; a development start (no
MASTER_KEY) on a data directory sealed with a production MASTER_KEY refuses, and leaves
no master.key behind."""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import admin_pb2, keys_pb2, resources_pb2
from keyturn_server.api.http.browsers import loopback_name
from keyturn_server.clock import ManualClock
from keyturn_server.crypto.master import MasterKeyError
from tests.harness import MASTER_KEY, Harness, fails
from tests.http_support import HttpClient


async def test_the_anonymous_admin_cannot_mint_or_revoke_access_tokens(server: Harness) -> None:
    await server.restart(insecure_no_auth=True)
    anonymous = server.client(None)
    minted = await fails(
        anonymous.admin.CreateAccessToken(
            admin_pb2.CreateAccessTokenRequest(name="backdoor", role=resources_pb2.ROLE_ADMIN)
        )
    )
    assert minted.code == grpc.StatusCode.PERMISSION_DENIED
    assert minted.reason == "INSECURE_NO_AUTH" and "--insecure-no-auth" in minted.message
    revoked = await fails(
        anonymous.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name="admin"))
    )
    assert revoked.code == grpc.StatusCode.PERMISSION_DENIED

    # Everything else still works for the developer, and the real admin token still can.
    await anonymous.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))
    created = await server.admin.admin.CreateAccessToken(
        admin_pb2.CreateAccessTokenRequest(name="ci", role=resources_pb2.ROLE_SERVICE)
    )
    assert created.token

    await server.restart(insecure_no_auth=False)
    listed = await server.admin.admin.ListAccessTokens(
        admin_pb2.ListAccessTokensRequest(include_revoked=True)
    )
    assert sorted(t.name for t in listed.access_tokens) == ["admin", "ci"]


async def test_insecure_no_auth_is_announced_loudly(
    server: Harness, logs_hold_no_secrets: io.StringIO
) -> None:
    await server.restart(insecure_no_auth=True)
    lines = [json.loads(line) for line in logs_hold_no_secrets.getvalue().splitlines()]
    loud = [
        line
        for line in lines
        if line["level"] == "warning"
        and line["category"] == "security"
        and "--insecure-no-auth" in line["msg"]
    ]
    assert loud and "ADMIN" in loud[0]["msg"]


async def test_development_mode_on_production_data_refuses_and_leaves_no_key(
    tmp_path: Path,
) -> None:
    production = Harness(tmp_path / "data", ManualClock())
    await production.start()
    await production.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
    await production.stop()

    with pytest.raises(MasterKeyError, match="MASTER_KEY"):
        await production.start(master_key=None)
    assert not (tmp_path / "data" / "master.key").exists()
    await production.start(master_key=MASTER_KEY)  # the right key still opens it
    await production.stop()


async def test_a_web_page_cannot_drive_an_unauthenticated_server(server: Harness) -> None:
    """With --insecure-no-auth, nothing but the loopback address stands between the API and
    any web page the developer visits: the browser sends what the page asks to 127.0.0.1
    (a form or a no-cors fetch, whose answer the page cannot read but whose effect is
    done), and a name the page's site rebinds to 127.0.0.1 (DNS rebinding) makes it the
    same origin, answers included. Requests that carry a browser's cross-site marks, or a
    Host that is not a loopback name, are refused; curl, the clients and the
    specification's examples send neither."""
    await server.restart(insecure_no_auth=True)
    http = HttpClient(server.http_url)
    port = server.http_url.rsplit(":", 1)[1]
    body = {"type": "encryption", "userId": "page"}
    attempts = {
        "a DNS-rebound name": {"Host": f"evil.example:{port}"},
        "a cross-site form or fetch": {
            "Origin": "https://evil.example",
            "Content-Type": "text/plain",
        },
        "a cross-site request without Origin": {"Sec-Fetch-Site": "cross-site"},
    }
    for what, headers in attempts.items():
        for path in ("/api/key-management/keys/generate", "/v1/keys"):
            answer = await http.post(path, body, headers=headers)
            assert answer.status == 403, (what, path, answer.status, answer.text)
            assert "evil.example" not in answer.text
    listed = await http.get("/v1/keys")
    assert listed.status == 200 and not (listed.body or {}).get("keys"), listed.text  # none made

    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        made = await http.post("/v1/keys", body, headers={"Host": host})
        assert made.status == 200, (host, made.text)
    same_page = await http.post("/v1/keys", body, headers={"Sec-Fetch-Site": "none"})
    assert same_page.status == 200  # typed into the address bar: no page asked for it

    # With authentication, a page has no token to send: nothing is refused for its Host.
    await server.restart(insecure_no_auth=False)
    named = HttpClient(server.http_url, server.admin_token)
    answer = await named.get("/v1/keys", headers={"Host": "keyturn.internal"})
    assert answer.status == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("api.localhost:8080", True),  # RFC 6761: browsers resolve it to loopback themselves
        ("127.0.0.1:8080", True),
        ("127.1.2.3", True),
        ("[::1]:8080", True),
        ("::1", True),
        ("evil.example:8080", False),
        ("localhost.evil.example", False),
        ("10.0.0.1:8080", False),
        ("[::2]:8080", False),
        ("", False),
    ],
)
def test_which_host_names_are_loopback(host: str, loopback: bool) -> None:
    assert loopback_name(host) is loopback
