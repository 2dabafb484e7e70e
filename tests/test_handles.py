"""HandleService end to end: every rule enforced, not just recorded."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2

from keyturn.v1 import admin_pb2, handles_pb2, resources_pb2
from keyturn_server.domain import tokens
from tests.harness import Client, Harness, fails

R = handles_pb2
CTX = {"ip": "192.168.1.100", "user_agent": "MyApp/1.0"}


async def issue(
    client: Client, type_name: str = "workflow", context: dict[str, str] | None = None
) -> R.GenerateHandleResponse:
    return await client.handles.GenerateHandle(
        R.GenerateHandleRequest(
            type=type_name, context=context if context is not None else dict(CTX), user_id="user123"
        )
    )


async def validate(
    client: Client, token: str, context: dict[str, str] | None = None
) -> R.Validation:
    response = await client.handles.ValidateHandle(
        R.ValidateHandleRequest(token=token, context=context if context is not None else dict(CTX))
    )
    return response.validation


@pytest.mark.parametrize(
    ("type_name", "length", "max_usage", "rotation", "lifetime"),
    [
        ("session", 32, 1000, timedelta(hours=1), timedelta(hours=24)),
        ("workflow", 64, 100, timedelta(minutes=30), timedelta(hours=4)),
        ("api", 48, 500, timedelta(minutes=15), timedelta(hours=1)),
        ("device", 56, 50, timedelta(minutes=5), timedelta(minutes=30)),
    ],
    ids=["session", "workflow", "api", "device"],
)
async def test_each_builtin_type_issues_a_secret_once_with_its_limits(
    server: Harness,
    type_name: str,
    length: int,
    max_usage: int,
    rotation: timedelta,
    lifetime: timedelta,
) -> None:
    issued = await issue(server.admin, type_name)
    handle = issued.handle
    assert handle.id.startswith("hdl_") and handle.type == type_name
    assert handle.max_usage == max_usage and handle.usage_count == 0
    created = handle.create_time.ToDatetime()
    assert handle.rotate_time.ToDatetime() - created == rotation
    assert handle.expire_time.ToDatetime() - created == lifetime
    assert issued.token.startswith(f"kt_{type_name}_")
    assert tokens.parse(issued.token) is not None
    assert handle.id not in issued.token  # the id is an accessor, never the credential

    fetched = await server.admin.handles.GetHandle(R.GetHandleRequest(handle_id=handle.id))
    listed = await server.admin.handles.ListHandles(R.ListHandlesRequest(type=type_name))
    assert issued.token not in str(fetched) and issued.token not in str(listed)
    assert fetched.bound_ip == CTX["ip"]


async def test_a_valid_token_counts_one_use_per_validation(server: Harness) -> None:
    issued = await issue(server.admin)
    first = await validate(server.admin, issued.token)
    assert first.valid and first.handle_id == issued.handle.id
    assert first.remaining_uses == 99 and not first.rotated
    second = await validate(server.admin, issued.token)
    assert second.remaining_uses == 98
    handle = await server.admin.handles.GetHandle(R.GetHandleRequest(handle_id=issued.handle.id))
    assert handle.usage_count == 2 and handle.HasField("last_used_time")


async def test_workflow_handle_refuses_the_101st_validation_even_after_a_restart(
    server: Harness,
) -> None:
    issued = await issue(server.admin)
    for _ in range(60):
        assert (await validate(server.admin, issued.token)).valid
    await server.restart()
    for _ in range(40):
        assert (await validate(server.admin, issued.token)).valid
    refused = await validate(server.admin, issued.token)
    assert not refused.valid
    assert refused.reason == R.VALIDATION_REASON_EXHAUSTED
    handle = await server.admin.handles.GetHandle(R.GetHandleRequest(handle_id=issued.handle.id))
    assert handle.usage_count == 100
    assert handle.status == resources_pb2.HANDLE_STATUS_EXHAUSTED


async def test_concurrent_validations_never_exceed_max_usage(server: Harness) -> None:
    issued = await issue(server.admin, "device")  # max usage 50
    clients = [server.client(server.admin_token) for _ in range(8)]
    results = await asyncio.gather(
        *[validate(clients[i % len(clients)], issued.token) for i in range(120)]
    )
    assert sum(r.valid for r in results) == 50
    assert {r.reason for r in results if not r.valid} == {R.VALIDATION_REASON_EXHAUSTED}
    handle = await server.admin.handles.GetHandle(R.GetHandleRequest(handle_id=issued.handle.id))
    assert handle.usage_count == 50


async def test_a_mixed_burst_is_answered_as_if_each_validation_ran_alone(
    server: Harness,
) -> None:
    """Validations arriving together share one unit of work; each must still get the
    answer it would get alone, in some serial order, with the counts to match."""
    capped = await issue(server.admin, "device")  # max usage 50
    revoked = await issue(server.admin)
    await server.admin.handles.RemoveHandle(
        R.RemoveHandleRequest(handle_id=revoked.handle.id, reason="test")
    )
    rotated_from = await issue(server.admin)
    rotated = await server.admin.handles.RotateHandle(
        R.RotateHandleRequest(handle_id=rotated_from.handle.id)
    )
    racing = await issue(server.admin)
    unknown = tokens.new_token("workflow", 64)
    plan = (
        [("capped", capped.token)] * 60
        + [("revoked", revoked.token)] * 5
        + [("old", rotated_from.token)] * 10
        + [("new", rotated.token)] * 10
        + [("racing", racing.token)] * 30
        + [("unknown", unknown)] * 5
    )
    random.Random(7).shuffle(plan)
    clients = [server.client(server.admin_token) for _ in range(6)]

    async def remove_racing() -> None:
        await asyncio.sleep(0)
        await server.admin.handles.RemoveHandle(
            R.RemoveHandleRequest(handle_id=racing.handle.id, reason="mid-burst")
        )

    *results, _ = await asyncio.gather(
        *[validate(clients[i % len(clients)], token) for i, (_, token) in enumerate(plan)],
        remove_racing(),
    )
    by: dict[str, list[R.Validation]] = {}
    for (label, _), result in zip(plan, results, strict=True):
        by.setdefault(label, []).append(result)

    assert sum(r.valid for r in by["capped"]) == 50
    assert {r.reason for r in by["capped"] if not r.valid} == {R.VALIDATION_REASON_EXHAUSTED}
    assert all(r.reason == R.VALIDATION_REASON_REVOKED for r in by["revoked"])
    assert all(
        [a.kind for a in r.anomalies] == [resources_pb2.ANOMALY_KIND_USE_AFTER_REVOCATION]
        for r in by["revoked"]
    )
    assert all(r.valid and r.rotated for r in by["old"])
    assert all(r.valid and not r.rotated for r in by["new"])
    assert all(not r.valid and r.reason == R.VALIDATION_REASON_INVALID for r in by["unknown"])
    # Whatever the order of the removal among the validations: none valid after it.
    racing_valid = [r.valid for r in by["racing"]]
    assert all(r.reason == R.VALIDATION_REASON_REVOKED for r in by["racing"] if not r.valid)

    async def usage(handle_id: str) -> int:
        got = await server.admin.handles.GetHandle(R.GetHandleRequest(handle_id=handle_id))
        return got.usage_count

    assert await usage(capped.handle.id) == 50
    assert await usage(revoked.handle.id) == 0
    assert await usage(rotated_from.handle.id) == 20
    assert await usage(racing.handle.id) == sum(racing_valid)


@pytest.mark.parametrize(
    ("seen", "field"),
    [
        ({"ip": "10.0.0.9", "user_agent": "MyApp/1.0"}, "ip"),
        ({"ip": "192.168.1.100", "user_agent": "curl/8"}, "user_agent"),
        ({"user_agent": "MyApp/1.0"}, "ip"),
    ],
    ids=["other-ip", "other-user-agent", "missing-ip"],
)
async def test_context_mismatch_is_refused_and_reported(
    server: Harness, seen: dict[str, str], field: str
) -> None:
    issued = await issue(server.admin)
    refused = await validate(server.admin, issued.token, seen)
    assert not refused.valid
    assert refused.reason == R.VALIDATION_REASON_CONTEXT_MISMATCH
    if seen.get(field):
        [anomaly] = refused.anomalies
        assert anomaly.kind == resources_pb2.ANOMALY_KIND_CONTEXT_DRIFT
        assert anomaly.evidence[f"expected_{field}"] == CTX[field]
        assert anomaly.evidence[f"seen_{field}"] == seen[field]
    handle = await server.admin.handles.GetHandle(R.GetHandleRequest(handle_id=issued.handle.id))
    assert handle.usage_count == 0  # a refused validation is not a use
    assert (await validate(server.admin, issued.token)).valid


async def test_context_is_bound_at_first_use_when_not_given_at_issuance(
    server: Harness,
) -> None:
    issued = await issue(server.admin, context={"purpose": "batch"})
    assert (await validate(server.admin, issued.token)).valid
    handle = await server.admin.handles.GetHandle(R.GetHandleRequest(handle_id=issued.handle.id))
    assert (handle.bound_ip, handle.bound_user_agent) == (CTX["ip"], CTX["user_agent"])
    moved = await validate(server.admin, issued.token, {"ip": "10.1.1.1", "user_agent": "x"})
    assert moved.reason == R.VALIDATION_REASON_CONTEXT_MISMATCH


@pytest.mark.parametrize(
    ("bound", "presented"),
    [
        ("2001:db8::1", "2001:DB8::1"),
        ("2001:db8::1", "2001:db8:0:0:0:0:0:1"),
        ("10.0.0.1", "::ffff:10.0.0.1"),
        ("::FFFF:10.0.0.1", " 10.0.0.1"),
    ],
)
async def test_an_address_in_another_spelling_is_the_same_address(
    server: Harness, bound: str, presented: str
) -> None:
    await server.set_policies(revoke_on=[resources_pb2.ANOMALY_KIND_CONTEXT_DRIFT])
    issued = await issue(server.admin, "session", context={"ip": bound, "user_agent": "UA"})

    checked = await validate(server.admin, issued.token, {"ip": presented, "user_agent": "UA"})

    assert checked.valid and not checked.anomalies
    moved = await validate(server.admin, issued.token, {"ip": "10.9.9.9", "user_agent": "UA"})
    assert moved.reason == R.VALIDATION_REASON_CONTEXT_MISMATCH  # still bound


@pytest.mark.parametrize("ip", ["definitely not an ip", "10.0.0.1, 10.0.0.2", "10.0.0.256"])
async def test_a_context_ip_that_is_no_address_is_refused_at_issuance(
    server: Harness, ip: str
) -> None:
    issuing = await fails(issue(server.admin, "session", context={"ip": ip}))

    assert issuing.code == grpc.StatusCode.INVALID_ARGUMENT
    assert issuing.reason == "INVALID_CONTEXT_IP" and "context['ip']" in issuing.violations


async def test_a_handle_bound_to_text_that_is_no_address_keeps_matching_it(
    server: Harness,
) -> None:
    """As handles bound before addresses were checked are: refusing the text on every
    validation would lock their owners out for the handles' lives."""
    issued = await issue(server.admin, "session", context={})
    legacy = {"ip": "10.0.0.1:5000", "user_agent": "UA"}
    assert (await validate(server.admin, issued.token, legacy)).valid  # bound at first use

    again = await validate(server.admin, issued.token, legacy)
    moved = await validate(server.admin, issued.token, {"ip": "10.0.0.1", "user_agent": "UA"})

    assert again.valid
    assert moved.reason == R.VALIDATION_REASON_CONTEXT_MISMATCH


async def test_the_rate_limit_applies_per_handle_per_minute(server: Harness) -> None:
    await server.set_policies(rate_limit_per_handle=5)
    limited, other = await issue(server.admin, "session"), await issue(server.admin, "session")
    results = [await validate(server.admin, limited.token) for _ in range(7)]
    assert [r.valid for r in results] == [True] * 5 + [False] * 2
    assert results[5].reason == R.VALIDATION_REASON_RATE_LIMITED
    assert [a.kind for a in results[5].anomalies] == [resources_pb2.ANOMALY_KIND_RATE_LIMIT_BURST]
    assert not results[6].anomalies  # one report per window, not one per refusal
    assert (await validate(server.admin, other.token)).valid  # the limit is per handle
    await server.advance(timedelta(minutes=2))
    assert (await validate(server.admin, limited.token)).valid


async def test_rotation_is_dual_phase_and_reuse_after_grace_revokes(server: Harness) -> None:
    issued = await issue(server.admin)  # workflow: grace = warning threshold, 5 minutes
    rotated = await server.admin.handles.RotateHandle(
        R.RotateHandleRequest(handle_id=issued.handle.id, reason="deploy")
    )
    assert rotated.token != issued.token and rotated.handle.generation == 2
    assert rotated.previous_valid_until.ToDatetime() - server.clock.now().replace(
        tzinfo=None
    ) == timedelta(minutes=5)

    old = await validate(server.admin, issued.token)
    assert old.valid and old.rotated
    assert (await validate(server.admin, rotated.token)).valid

    await server.advance(timedelta(minutes=5))
    reused = await validate(server.admin, issued.token)
    assert not reused.valid and reused.reason == R.VALIDATION_REASON_SUPERSEDED
    assert [a.kind for a in reused.anomalies] == [resources_pb2.ANOMALY_KIND_TOKEN_REUSE]
    assert reused.anomalies[0].action == resources_pb2.ANOMALY_ACTION_REVOKED
    after = await validate(server.admin, rotated.token)
    assert not after.valid and after.reason == R.VALIDATION_REASON_REVOKED


async def test_a_second_rotation_ends_the_grace_of_every_secret_before_the_previous(
    server: Harness,
) -> None:
    issued = await issue(server.admin)
    rotate = R.RotateHandleRequest(handle_id=issued.handle.id, reason="suspected leak")
    second = await server.admin.handles.RotateHandle(rotate)
    await server.advance(timedelta(seconds=1))
    third = await server.admin.handles.RotateHandle(rotate)

    previous = await validate(server.admin, second.token)
    assert previous.valid and previous.rotated  # the one just superseded keeps its grace
    assert (await validate(server.admin, third.token)).valid
    leaked = await validate(server.admin, issued.token)  # inside the grace it had
    assert not leaked.valid and leaked.reason == R.VALIDATION_REASON_SUPERSEDED
    assert [a.kind for a in leaked.anomalies] == [resources_pb2.ANOMALY_KIND_TOKEN_REUSE]


async def test_the_schedulers_rotations_leave_each_secret_its_own_grace(server: Harness) -> None:
    """A type may give a grace longer than its rotation interval (owners offline that
    long collect one successor after another): only a caller's RotateHandle ends older
    graces."""
    config = await server.admin.admin.GetConfig(admin_pb2.GetConfigRequest())
    slow = admin_pb2.HandleTypeConfig(
        algorithm="sha256",
        handle_length=32,
        rotation_interval=duration_pb2.Duration(seconds=60),
        warning_threshold=duration_pb2.Duration(seconds=10),
        max_lifetime=duration_pb2.Duration(seconds=3600),
        max_usage=100,
        grace_period=duration_pb2.Duration(seconds=600),
    )
    await server.admin.admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(handle_types={"slow-owner": slow}),
            update_mask={"paths": ["handle_types.slow-owner"]},
            etag=config.etag,
        )
    )
    issued = await issue(server.admin, "slow-owner")

    await server.advance(timedelta(seconds=61))
    await server.advance(timedelta(seconds=61))  # two automatic rotations
    first = await validate(server.admin, issued.token)

    handle = await server.admin.handles.GetHandle(R.GetHandleRequest(handle_id=issued.handle.id))
    assert handle.generation == 3
    assert first.valid and first.rotated


async def test_rotations_in_a_row_leave_two_live_secrets(server: Harness) -> None:
    await server.set_policies(prevent_reuse=False)  # refusals only: the handle lives on
    issued = await issue(server.admin)
    rotate = R.RotateHandleRequest(handle_id=issued.handle.id)
    tokens = [issued.token] + [
        (await server.admin.handles.RotateHandle(rotate)).token for _ in range(4)
    ]

    live = [(await validate(server.admin, t)).valid for t in tokens]

    assert live == [False, False, False, True, True]


async def test_without_prevent_reuse_a_superseded_secret_is_only_refused(
    server: Harness,
) -> None:
    await server.set_policies(prevent_reuse=False)
    issued = await issue(server.admin)
    rotated = await server.admin.handles.RotateHandle(
        R.RotateHandleRequest(token=issued.token, context=CTX)
    )
    await server.advance(timedelta(minutes=6))
    reused = await validate(server.admin, issued.token)
    assert reused.reason == R.VALIDATION_REASON_SUPERSEDED and not reused.anomalies
    assert (await validate(server.admin, rotated.token)).valid


async def test_rotating_by_token_issues_a_successor(server: Harness) -> None:
    issued = await issue(server.admin)
    rotated = await server.admin.handles.RotateHandle(
        R.RotateHandleRequest(token=issued.token, reason="self-rotation", context=CTX)
    )
    assert rotated.handle.id == issued.handle.id and rotated.token != issued.token
    again = await fails(
        server.admin.handles.RotateHandle(R.RotateHandleRequest(token=issued.token, context=CTX))
    )
    assert again.code == grpc.StatusCode.FAILED_PRECONDITION
    assert again.reason == "ALREADY_ROTATED"


async def test_revocation_is_immediate(server: Harness) -> None:
    issued = await issue(server.admin)
    assert (await validate(server.admin, issued.token)).valid
    removed = await server.admin.handles.RemoveHandle(
        R.RemoveHandleRequest(handle_id=issued.handle.id, user_id="ops", reason="laptop stolen")
    )
    assert removed.status == resources_pb2.HANDLE_STATUS_REVOKED
    assert removed.revoke_reason == "laptop stolen"
    after = await validate(server.admin, issued.token)
    assert not after.valid and after.reason == R.VALIDATION_REASON_REVOKED
    assert [a.kind for a in after.anomalies] == [resources_pb2.ANOMALY_KIND_USE_AFTER_REVOCATION]


async def test_handles_expire_at_max_lifetime(server: Harness) -> None:
    issued = await issue(server.admin, "device")  # 30 minutes
    await server.advance(timedelta(minutes=30))
    refused = await validate(server.admin, issued.token)
    assert refused.reason == R.VALIDATION_REASON_EXPIRED
    handle = await server.admin.handles.GetHandle(R.GetHandleRequest(handle_id=issued.handle.id))
    assert handle.status == resources_pb2.HANDLE_STATUS_EXPIRED


async def test_unknown_revoked_and_expired_tokens_look_alike_to_other_services(
    server: Harness,
) -> None:
    owner = await server.client_for("service", "owner-svc")
    validator = await server.client_for("service", "validator-svc")
    revoked = await issue(owner, "device")
    await owner.handles.RemoveHandle(R.RemoveHandleRequest(handle_id=revoked.handle.id))
    expired = await issue(owner, "device")
    valid = await issue(owner, "device")
    await server.advance(timedelta(minutes=30))
    valid_now = await issue(owner, "device")
    forged = tokens.new_token("device", 56)

    # `valid` was issued before the clock moved: it has expired too.
    presented = (revoked.token, expired.token, valid.token, forged)
    answers = [await validate(validator, t) for t in presented]
    assert all(not a.valid for a in answers)
    assert {a.reason for a in answers} == {R.VALIDATION_REASON_INVALID}
    assert all(a.handle_id == "" and not a.anomalies for a in answers)
    good = await validate(validator, valid_now.token)
    assert good.valid and good.handle_id == valid_now.handle.id

    owner_view = await validate(owner, revoked.token)
    assert owner_view.reason == R.VALIDATION_REASON_REVOKED


async def test_malformed_tokens_are_refused_without_a_lookup(server: Harness) -> None:
    issued = await issue(server.admin)
    broken = issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")
    for token in (broken, "not-a-token", "kt_workflow_", "x" * 300):
        answer = await validate(server.admin, token)
        assert not answer.valid and answer.reason == R.VALIDATION_REASON_MALFORMED


async def test_a_flood_of_invalid_tokens_from_one_peer_is_an_anomaly(server: Harness) -> None:
    for _ in range(20):
        await validate(server.admin, tokens.new_token("workflow", 64), {"ip": "203.0.113.9"})
    stats = (
        await server.admin.handles.GetHandleStatistics(R.GetHandleStatisticsRequest())
    ).statistics
    assert stats.anomalies_by_kind["INVALID_TOKEN_FLOOD"] == 1
    assert stats.failures_by_reason["INVALID"] == 20


async def test_max_concurrent_handles_caps_active_handles_per_owner(server: Harness) -> None:
    await server.set_policies(max_concurrent_handles=3)
    service = await server.client_for("service")
    for _ in range(3):
        await issue(service)
    refused = await fails(issue(service))
    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.reason == "MAX_CONCURRENT_HANDLES"
    assert (await issue(server.admin)).token  # another owner is unaffected


async def test_statistics_report_usage_failures_anomalies_and_latency(server: Harness) -> None:
    first, second = await issue(server.admin), await issue(server.admin, "session")
    for _ in range(3):
        await validate(server.admin, first.token)
    await validate(server.admin, second.token)
    await validate(server.admin, first.token, {"ip": "10.9.9.9", "user_agent": "MyApp/1.0"})
    stats = (
        await server.admin.handles.GetHandleStatistics(R.GetHandleStatisticsRequest())
    ).statistics
    assert stats.total == 2
    workflow = stats.by_type["workflow"]
    assert (workflow.total, workflow.total_usage, workflow.max_usage) == (1, 3, 3)
    assert stats.by_type["session"].average_usage == 1.0
    assert (stats.validations, stats.validations_succeeded) == (5, 4)
    assert stats.failures_by_reason["CONTEXT_MISMATCH"] == 1
    assert stats.anomalies_by_kind["CONTEXT_DRIFT"] == 1
    assert stats.validate_latency.count == 5
    assert stats.validate_latency.p99.ToTimedelta() >= stats.validate_latency.p50.ToTimedelta()


async def test_bad_handle_requests_get_clear_statuses(server: Harness) -> None:
    unknown_type = await fails(
        server.admin.handles.GenerateHandle(R.GenerateHandleRequest(type="nope"))
    )
    assert unknown_type.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "type" in unknown_type.violations
    missing = await fails(
        server.admin.handles.GetHandle(R.GetHandleRequest(handle_id="hdl_aaaaaaaaaaaaaaaa"))
    )
    assert missing.code == grpc.StatusCode.NOT_FOUND
    empty = await fails(server.admin.handles.ValidateHandle(R.ValidateHandleRequest()))
    assert "token" in empty.violations
    neither = await fails(server.admin.handles.RotateHandle(R.RotateHandleRequest()))
    assert neither.code == grpc.StatusCode.INVALID_ARGUMENT
