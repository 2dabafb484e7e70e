"""Crafted input: page tokens with huge or infinite numbers, deep nesting or a forged
cursor, timestamps and durations past what a datetime holds, oversized strings echoed in
errors, and bidirectional overrides or C1 controls. Every one is INVALID_ARGUMENT with a
field violation, never INTERNAL; a page token is honoured only for the query and the
caller it was issued to; an error quotes at most a bounded prefix of the input."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import grpc
import pytest

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2, resources_pb2
from tests.harness import Harness, fails


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _fingerprint(*filters: object) -> str:
    """How an unauthenticated page token names its filters (anyone can compute it)."""
    return hashlib.sha256(repr(filters).encode()).hexdigest()[:12]


#: The filters of an admin's ListKeys without filters, as an unauthenticated token names them.
ALL_KEYS = _fingerprint("keys", "", None, "")

FORGED_PAGE_TOKENS = {
    "infinite number": _token(b'{"t": 1e400, "i": "key_", "f": "%s"}' % ALL_KEYS.encode()),
    "huge number": _token(json.dumps({"t": 10**40, "i": "", "f": ALL_KEYS}).encode()),
    "deep nesting": _token(b"[" * 50_000 + b"]" * 50_000),
    "a forged cursor": _token(json.dumps({"t": 0, "i": "", "f": ALL_KEYS}).encode()),
}


async def _keys(server: Harness, n: int) -> None:
    for _ in range(n):
        await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api"))


@pytest.mark.parametrize("token", FORGED_PAGE_TOKENS.values(), ids=FORGED_PAGE_TOKENS.keys())
async def test_a_forged_page_token_is_invalid_argument(server: Harness, token: str) -> None:
    for call in (
        server.admin.keys.ListKeys(keys_pb2.ListKeysRequest(page_token=token)),
        server.admin.handles.ListHandles(handles_pb2.ListHandlesRequest(page_token=token)),
        server.admin.admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(page_token=token)),
    ):
        failed = await fails(call)
        assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in failed.violations


async def test_a_page_token_pages_only_its_query_for_its_caller(server: Harness) -> None:
    await _keys(server, 3)
    first = await server.admin.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1))
    token = first.next_page_token
    following = await server.admin.keys.ListKeys(
        keys_pb2.ListKeysRequest(page_size=1, page_token=token)
    )
    assert following.keys[0].id != first.keys[0].id

    operator = await server.client_for("operator", "ops")
    borrowed = await fails(
        operator.keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1, page_token=token))
    )
    assert borrowed.code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in borrowed.violations
    filtered = await fails(
        server.admin.keys.ListKeys(keys_pb2.ListKeysRequest(type="api", page_token=token))
    )
    assert filtered.code == grpc.StatusCode.INVALID_ARGUMENT
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    altered = await fails(server.admin.keys.ListKeys(keys_pb2.ListKeysRequest(page_token=flipped)))
    assert altered.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("seconds", [2**62, -(2**62), 253_402_300_800, -62_135_596_801])
@pytest.mark.parametrize("field", ["start_time", "end_time"])
async def test_a_timestamp_beyond_year_9999_is_invalid_argument(
    server: Harness, field: str, seconds: int
) -> None:
    request = admin_pb2.ListAuditEventsRequest(**{field: {"seconds": seconds}})
    failed = await fails(server.admin.admin.ListAuditEvents(request))
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in failed.violations


@pytest.mark.parametrize("seconds", [10**15, 10**13, 10**11])
async def test_a_huge_token_lifetime_is_invalid_argument(server: Harness, seconds: int) -> None:
    failed = await fails(
        server.admin.admin.CreateAccessToken(
            admin_pb2.CreateAccessTokenRequest(
                name="forever", role=resources_pb2.ROLE_SERVICE, ttl={"seconds": seconds}
            )
        )
    )
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ttl" in failed.violations


@pytest.mark.parametrize("seconds", [10**15, -(10**15)])
async def test_a_huge_duration_in_the_configuration_is_invalid_argument(
    server: Harness, seconds: int
) -> None:
    config = await server.admin.admin.GetConfig(admin_pb2.GetConfigRequest())
    handle_type = admin_pb2.HandleTypeConfig(
        algorithm="sha256",
        handle_length=32,
        rotation_interval={"seconds": seconds},
        warning_threshold={"seconds": 2},
        max_lifetime={"seconds": 15},
        max_usage=3,
    )
    failed = await fails(
        server.admin.admin.UpdateConfig(
            admin_pb2.UpdateConfigRequest(
                config=admin_pb2.Config(handle_types={"blink": handle_type}),
                update_mask={"paths": ["handle_types.blink"]},
                etag=config.etag,
            )
        )
    )
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.handle_types.blink.rotation_interval" in failed.violations


LONG = "<" + "x" * 10_000 + ">"


def _bloated(name: str, server: Harness) -> Any:
    """One call that carries LONG where the server may name it in an error."""
    a = server.admin
    if name == "GenerateKey type":
        return a.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type=LONG))
    if name == "GenerateHandle type":
        return a.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type=LONG))
    if name == "UpdateConfig path":
        return a.admin.UpdateConfig(admin_pb2.UpdateConfigRequest(update_mask={"paths": [LONG]}))
    if name == "GetHealth component":
        return a.admin.GetHealth(admin_pb2.GetHealthRequest(component=LONG))
    if name == "RevokeAccessToken name":
        return a.admin.RevokeAccessToken(admin_pb2.RevokeAccessTokenRequest(name=LONG))
    return a.admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(
                handle_types={LONG: admin_pb2.HandleTypeConfig(algorithm="sha256")}
            ),
            update_mask={"paths": [f"handle_types.{LONG}"]},
        )
    )


@pytest.mark.parametrize(
    "name",
    [
        "GenerateKey type",
        "GenerateHandle type",
        "UpdateConfig path",
        "GetHealth component",
        "RevokeAccessToken name",
        "UpdateConfig type name",
    ],
)
async def test_an_error_quotes_a_bounded_prefix_of_the_input(server: Harness, name: str) -> None:
    failed = await fails(_bloated(name, server))
    assert failed.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    shown = failed.message + "".join(failed.violations) + "".join(failed.violations.values())
    assert "x" * 65 not in shown


TRICKS = {
    "right-to-left override": "invoice\u202egnp.exe",
    "first strong isolate": "a\u2068b",
    "pop directional isolate": "ab\u2069",
    "C1 next line": "line\x85two",
    "C1 control": "\x9bcode",
}


@pytest.mark.parametrize("trick", TRICKS.values(), ids=TRICKS.keys())
async def test_bidi_overrides_and_c1_controls_are_refused(server: Harness, trick: str) -> None:
    context = await fails(
        server.admin.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session", context={"purpose": trick})
        )
    )
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f.startswith("context") for f in context.violations)
    user = await fails(
        server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="api", user_id=trick))
    )
    assert user.code == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in user.violations
