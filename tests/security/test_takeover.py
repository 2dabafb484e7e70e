"""Handle takeover: a service holding someone else's token (issue 11, item 1).

RotateHandle by token used to check neither ownership nor the handle's rules: a thief
got a fresh secret only it knew, the bound context in the reply, and the owner's secret
died after the grace. Each test replays the attack over gRPC against a real server.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest

from keyturn.v1 import events_pb2 as E
from keyturn.v1 import handles_pb2 as R
from keyturn.v1 import keys_pb2 as K
from keyturn_server.domain import tokens
from tests.harness import Harness, fails
from tests.security.attacks import CTX, WRONG, scene, validate


async def test_a_stolen_token_does_not_rotate_someone_elses_handle(server: Harness) -> None:
    s = await scene(server)
    # The thief even knows the bound context: rights decide, not knowledge.
    stolen = await fails(
        s.thief.handles.RotateHandle(R.RotateHandleRequest(token=s.issued.token, context=CTX))
    )
    unknown = await fails(
        s.thief.handles.RotateHandle(
            R.RotateHandleRequest(token=tokens.new_token("workflow", 64), context=CTX)
        )
    )
    assert (stolen.code, stolen.reason, stolen.message) == (
        unknown.code,
        unknown.reason,
        unknown.message,
    )
    assert stolen.code == grpc.StatusCode.NOT_FOUND and stolen.reason == "TOKEN_NOT_VALID"

    handle = await s.owner.handles.GetHandle(R.GetHandleRequest(handle_id=s.issued.handle.id))
    assert handle.generation == 1
    await server.advance(timedelta(minutes=10))  # past any grace
    assert (await validate(s.owner, s.issued.token, CTX)).valid


async def test_a_stolen_previous_secret_does_not_collect_the_automatic_successor(
    server: Harness,
) -> None:
    s = await scene(server, "device")  # rotates every 5 minutes, 1 minute of grace
    await server.advance(timedelta(minutes=5))  # the scheduler rotated and sealed it
    refused = await fails(
        s.thief.handles.RotateHandle(R.RotateHandleRequest(token=s.issued.token, context=CTX))
    )
    assert refused.code == grpc.StatusCode.NOT_FOUND and refused.reason == "TOKEN_NOT_VALID"
    collected = await s.owner.handles.RotateHandle(
        R.RotateHandleRequest(token=s.issued.token, context=CTX)
    )
    assert collected.token and collected.handle.generation == 2


async def test_the_owner_rotates_by_token_only_with_the_bound_context(server: Harness) -> None:
    s = await scene(server)
    for context in ({}, WRONG):
        refused = await fails(
            s.owner.handles.RotateHandle(
                R.RotateHandleRequest(token=s.issued.token, context=context)
            )
        )
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.reason == "CONTEXT_MISMATCH"
    handle = await s.owner.handles.GetHandle(R.GetHandleRequest(handle_id=s.issued.handle.id))
    assert handle.generation == 1 and handle.anomaly_count == 1  # the drift, seen once
    rotated = await s.owner.handles.RotateHandle(
        R.RotateHandleRequest(token=s.issued.token, context=CTX)
    )
    assert rotated.handle.generation == 2


async def test_rotating_by_token_obeys_the_handle_rate_limit(server: Harness) -> None:
    await server.set_policies(rate_limit_per_handle=3)
    s = await scene(server)
    for _ in range(3):
        assert (await validate(s.owner, s.issued.token, CTX)).valid
    limited = await fails(
        s.owner.handles.RotateHandle(R.RotateHandleRequest(token=s.issued.token, context=CTX))
    )
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.reason == "HANDLE_RATE_LIMITED"
    assert limited.retry_after is not None and limited.retry_after > timedelta(0)


async def test_a_validation_by_another_service_does_not_name_the_owner(server: Harness) -> None:
    s = await scene(server)
    seen = await validate(s.thief, s.issued.token, CTX)  # a resource server, say
    assert seen.valid and seen.handle_id == s.issued.handle.id
    assert seen.owner == "" and not seen.anomalies
    assert (await validate(s.owner, s.issued.token, CTX)).owner == "owner-svc"


# --- the review: every RPC that takes an id or a token ------------------------------
# These held on the base commit already; they stay here so that a change cannot
# quietly open one of them.


async def _other_services_resources(server: Harness) -> dict[str, str]:
    s = await scene(server)
    key = await s.owner.keys.GenerateKey(K.GenerateKeyRequest(type="session"))
    signing = await s.owner.keys.GenerateKey(K.GenerateKeyRequest(type="signing"))
    return {"handle": s.issued.handle.id, "key": key.key.id, "signing": signing.key.id}


CALLS = {
    "GetHandle": lambda c, ids: c.handles.GetHandle(R.GetHandleRequest(handle_id=ids["handle"])),
    "RemoveHandle": lambda c, ids: c.handles.RemoveHandle(
        R.RemoveHandleRequest(handle_id=ids["handle"])
    ),
    "RotateHandle-by-id": lambda c, ids: c.handles.RotateHandle(
        R.RotateHandleRequest(handle_id=ids["handle"])
    ),
    "GetKey": lambda c, ids: c.keys.GetKey(K.GetKeyRequest(key_id=ids["key"])),
    "RotateKey": lambda c, ids: c.keys.RotateKey(K.RotateKeyRequest(key_id=ids["key"])),
    "RemoveKey": lambda c, ids: c.keys.RemoveKey(K.RemoveKeyRequest(key_id=ids["key"])),
    "RestoreKey": lambda c, ids: c.keys.RestoreKey(K.RestoreKeyRequest(key_id=ids["key"])),
    "ExportKey": lambda c, ids: c.keys.ExportKey(K.ExportKeyRequest(key_id=ids["key"])),
    "DisableKeyVersion": lambda c, ids: c.keys.DisableKeyVersion(
        K.DisableKeyVersionRequest(key_id=ids["key"], version=1)
    ),
    "EnableKeyVersion": lambda c, ids: c.keys.EnableKeyVersion(
        K.EnableKeyVersionRequest(key_id=ids["key"], version=2)
    ),
    "ComputeMac": lambda c, ids: c.keys.ComputeMac(
        K.ComputeMacRequest(key_id=ids["key"], data=b"x")
    ),
    "GetPublicKey": lambda c, ids: c.keys.GetPublicKey(
        K.GetPublicKeyRequest(key_id=ids["signing"])
    ),
    "Sign": lambda c, ids: c.keys.Sign(K.SignRequest(key_id=ids["signing"], data=b"x")),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_another_services_ids_answer_as_unknown_ids(server: Harness, call: object) -> None:
    ids = await _other_services_resources(server)
    thief = await server.client_for("service", "prober")
    taken = await fails(call(thief, ids))  # type: ignore[operator]
    made_up = {
        "handle": "hdl_" + "a" * 16,
        "key": "key_" + "a" * 16,
        "signing": "key_" + "b" * 16,
    }
    unknown = await fails(call(thief, made_up))  # type: ignore[operator]
    assert taken.code == unknown.code == grpc.StatusCode.NOT_FOUND
    assert taken.reason == unknown.reason


async def test_watching_another_services_ids_shows_nothing_of_theirs(server: Harness) -> None:
    ids = await _other_services_resources(server)
    thief = await server.client_for("service", "watcher")
    # Asking for the owner by name shows nothing at all (tests/test_auth.py): without it,
    # the replay holds the owner's events and shows none of them.
    everything = thief.handles.WatchExpiring(
        E.WatchExpiringRequest(deliver_tokens=True, resume_after=0)
    )
    own = await thief.handles.GenerateHandle(R.GenerateHandleRequest(type="device"))
    # Its own handle's creation is the first event either stream shows: the owner's
    # handle, created earlier, is in the replayed log but not for this caller.
    first = await _next_event(everything)
    assert first.handle.id == own.handle.id and first.handle.owner == "watcher"
    await server.admin.handles.RemoveHandle(R.RemoveHandleRequest(handle_id=ids["handle"]))
    await thief.handles.RemoveHandle(R.RemoveHandleRequest(handle_id=own.handle.id))
    second = await _next_event(everything)
    assert second.handle.id == own.handle.id and second.kind == E.EVENT_KIND_REVOKED
    everything.cancel()


async def _next_event(stream: Any) -> E.ExpiryEvent:
    """The next event of a stream, past heartbeats (one follows every replay)."""
    while True:
        message: E.ExpiryEvent = await stream.read()
        if message.kind != E.EVENT_KIND_HEARTBEAT:
            return message
