"""AdminService: validated configuration with etags, the audit chain, and health."""

from __future__ import annotations

import itertools
import socket
from datetime import timedelta
from typing import Any

import grpc
import pytest
import sqlite_utils

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2, resources_pb2
from tests.harness import BACKEND, Harness, fails
from tests.test_metrics import sample, scrape_now

A = admin_pb2


def seconds(n: float) -> dict[str, int]:
    return {"seconds": int(n), "nanos": int((n - int(n)) * 1e9)}


def key_type(**overrides: Any) -> A.KeyTypeConfig:
    fields: dict[str, Any] = {
        "algorithm": "sha256",
        "key_length": 32,
        "rotation_interval": seconds(86400),
        "warning_threshold": seconds(3600),
        "max_lifetime": seconds(2592000),
    }
    fields.update(overrides)
    return A.KeyTypeConfig(**{k: v for k, v in fields.items() if v is not None})


def handle_type(**overrides: Any) -> A.HandleTypeConfig:
    fields: dict[str, Any] = {
        "algorithm": "sha256",
        "handle_length": 32,
        "rotation_interval": seconds(3600),
        "warning_threshold": seconds(300),
        "max_lifetime": seconds(86400),
        "max_usage": 1000,
    }
    fields.update(overrides)
    return A.HandleTypeConfig(**{k: v for k, v in fields.items() if v is not None})


async def update(
    server: Harness, config: A.Config, paths: list[str], etag: str | None = None
) -> A.Config:
    if etag is None:
        etag = (await server.admin.admin.GetConfig(A.GetConfigRequest())).etag
    return await server.admin.admin.UpdateConfig(
        A.UpdateConfigRequest(
            config=config, update_mask={"paths": paths}, etag=etag, user_id="ops", reason="test"
        )
    )


async def test_the_default_configuration_is_the_specification(server: Harness) -> None:
    config = await server.admin.admin.GetConfig(A.GetConfigRequest())
    assert set(config.key_types) == {"encryption", "signing", "session", "api"}
    assert set(config.handle_types) == {"session", "workflow", "api", "device"}
    workflow = config.handle_types["workflow"]
    assert (workflow.algorithm, workflow.handle_length, workflow.max_usage) == ("sha512", 64, 100)
    assert workflow.rotation_interval.ToTimedelta() == timedelta(minutes=30)
    p = config.security_policies
    assert (p.prevent_reuse, p.enforce_rotation, p.track_usage, p.anomaly_detection) == (
        True,
        True,
        True,
        True,
    )
    assert (p.rate_limit_per_handle, p.max_concurrent_handles) == (100, 1000)
    assert config.etag and config.revision == 1


async def test_custom_types_are_usable_at_once_down_to_one_second(server: Harness) -> None:
    tiny = dict(rotation_interval=seconds(2), warning_threshold=seconds(1), max_lifetime=seconds(4))
    updated = await update(
        server,
        A.Config(
            key_types={"custom": key_type(**tiny)},
            handle_types={"blink": handle_type(max_usage=3, **tiny)},
        ),
        ["key_types.custom", "handle_types.blink"],
    )
    assert updated.revision == 2 and "custom" in updated.key_types
    key = await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="custom"))
    assert key.key.algorithm == "sha256"
    handle = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="blink")
    )
    assert handle.token.startswith("kt_blink_") and handle.handle.max_usage == 3
    assert (
        handle.handle.expire_time.ToDatetime() - handle.handle.create_time.ToDatetime()
        == timedelta(seconds=4)
    )


async def test_a_custom_type_can_be_deleted_but_a_builtin_cannot(server: Harness) -> None:
    await update(server, A.Config(key_types={"custom": key_type()}), ["key_types.custom"])
    removed = await update(server, A.Config(), ["key_types.custom"])
    assert "custom" not in removed.key_types
    refused = await fails(update(server, A.Config(), ["key_types.encryption"]))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.key_types.encryption" in refused.violations
    refused_map = await fails(
        update(server, A.Config(key_types={"custom": key_type()}), ["key_types"])
    )
    assert "config.key_types" in refused_map.violations


BAD_CONFIGS: list[tuple[str, A.Config, list[str], str]] = [
    (
        "warning not below rotation",
        A.Config(key_types={"c": key_type(warning_threshold=seconds(86400))}),
        ["key_types.c"],
        "config.key_types.c.warning_threshold",
    ),
    (
        "rotation beyond lifetime",
        A.Config(handle_types={"c": handle_type(rotation_interval=seconds(90000))}),
        ["handle_types.c"],
        "config.handle_types.c.rotation_interval",
    ),
    (
        "unknown algorithm",
        A.Config(key_types={"c": key_type(algorithm="md5")}),
        ["key_types.c"],
        "config.key_types.c.algorithm",
    ),
    (
        "aes with a 16-byte key",
        A.Config(key_types={"c": key_type(algorithm="aes-256-gcm", key_length=16)}),
        ["key_types.c"],
        "config.key_types.c.key_length",
    ),
    (
        "rsa of 1024 bits",
        A.Config(key_types={"c": key_type(algorithm="rsa", key_length=1024)}),
        ["key_types.c"],
        "config.key_types.c.key_length",
    ),
    (
        "hmac key shorter than its hash",
        A.Config(key_types={"c": key_type(algorithm="sha512", key_length=32)}),
        ["key_types.c"],
        "config.key_types.c.key_length",
    ),
    (
        "missing duration",
        A.Config(key_types={"c": key_type(max_lifetime=None)}),
        ["key_types.c"],
        "config.key_types.c.max_lifetime",
    ),
    (
        "sub-second duration",
        A.Config(handle_types={"c": handle_type(warning_threshold={"nanos": 5000})}),
        ["handle_types.c"],
        "config.handle_types.c.warning_threshold",
    ),
    (
        "negative duration",
        A.Config(handle_types={"c": handle_type(max_lifetime={"seconds": -5})}),
        ["handle_types.c"],
        "config.handle_types.c.max_lifetime",
    ),
    (
        "zero max usage",
        A.Config(handle_types={"c": handle_type(max_usage=0)}),
        ["handle_types.c"],
        "config.handle_types.c.max_usage",
    ),
    (
        "handle secret of 8 bytes",
        A.Config(handle_types={"c": handle_type(handle_length=8)}),
        ["handle_types.c"],
        "config.handle_types.c.handle_length",
    ),
    (
        "bad type name",
        A.Config(key_types={"Bad Name!": key_type()}),
        ["key_types.Bad Name!"],
        "config.key_types.Bad Name!",
    ),
    (
        # The name rule was anchored with "$", which also matches before a final newline:
        # such a type was stored, and its keys could not be listed by their type.
        "type name ending in a newline",
        A.Config(key_types={"evil\n": key_type()}),
        ["key_types.evil\n"],
        "config.key_types.evil\n",
    ),
    (
        # Its tokens would read kt_api-access_..., as access tokens do: a leaked one would
        # be taken for an API credential, and the two kinds of secret digested alike.
        "handle type named as access tokens",
        A.Config(handle_types={"api-access": handle_type()}),
        ["handle_types.api-access"],
        "config.handle_types.api-access",
    ),
    (
        "zero rate limit",
        A.Config(security_policies=A.SecurityPolicies(rate_limit_per_handle=0)),
        ["security_policies.rate_limit_per_handle"],
        "config.security_policies.rate_limit_per_handle",
    ),
    (
        "unknown anomaly kind",
        A.Config(security_policies=A.SecurityPolicies(revoke_on=[42])),
        ["security_policies.revoke_on"],
        "config.security_policies.revoke_on",
    ),
    (
        "policy named but not set",
        A.Config(),
        ["security_policies.track_usage"],
        "config.security_policies.track_usage",
    ),
    ("unknown mask path", A.Config(), ["colour"], "update_mask"),
    # A path into one map entry, or a map path with an empty name, was accepted and wrote
    # (and audited) a revision that changed nothing, or replaced the whole map.
    (
        "path inside a key type",
        A.Config(key_types={"encryption": key_type(algorithm="aes-256-gcm")}),
        ["key_types.encryption.rotation_interval"],
        "update_mask",
    ),
    (
        "path inside a handle type",
        A.Config(handle_types={"workflow": handle_type()}),
        ["handle_types.workflow.max_usage"],
        "update_mask",
    ),
    (
        "map path with a trailing dot",
        A.Config(key_types={"custom": key_type()}),
        ["key_types."],
        "update_mask",
    ),
    ("deleting a type that cannot exist", A.Config(), ["handle_types.Nope"], "update_mask"),
    (
        "policies path with a trailing dot",
        A.Config(security_policies=A.SecurityPolicies(track_usage=False)),
        ["security_policies."],
        "update_mask",
    ),
]


@pytest.mark.parametrize(
    ("name", "config", "paths", "field"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS]
)
async def test_bad_configs_are_rejected_naming_the_field_and_change_nothing(
    server: Harness, name: str, config: A.Config, paths: list[str], field: str
) -> None:
    before = await server.admin.admin.GetConfig(A.GetConfigRequest())
    refused = await fails(update(server, config, paths, before.etag))
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in refused.violations, refused.violations
    after = await server.admin.admin.GetConfig(A.GetConfigRequest())
    assert after == before


async def test_a_path_inside_one_type_is_refused_saying_aip_134_has_none(
    server: Harness,
) -> None:
    refused = await fails(
        update(
            server,
            A.Config(key_types={"encryption": key_type(algorithm="aes-256-gcm")}),
            ["key_types.encryption.rotation_interval"],
        )
    )
    assert "inside one map entry" in refused.violations["update_mask"]
    assert "AIP-134" in refused.violations["update_mask"]
    audited = await server.admin.admin.ListAuditEvents(
        A.ListAuditEventsRequest(action="config.update")
    )
    assert not audited.events


async def test_a_stale_etag_is_aborted(server: Harness) -> None:
    first = await server.admin.admin.GetConfig(A.GetConfigRequest())
    await update(
        server,
        A.Config(security_policies=A.SecurityPolicies(track_usage=False)),
        ["security_policies.track_usage"],
        first.etag,
    )
    stale = await fails(
        update(
            server,
            A.Config(security_policies=A.SecurityPolicies(track_usage=True)),
            ["security_policies.track_usage"],
            first.etag,
        )
    )
    assert stale.code == grpc.StatusCode.ABORTED
    assert stale.reason == "ETAG_MISMATCH"
    current = await server.admin.admin.GetConfig(A.GetConfigRequest())
    assert current.security_policies.track_usage is False and current.revision == 2


REUSE = resources_pb2.ANOMALY_KIND_TOKEN_REUSE
DRIFT = resources_pb2.ANOMALY_KIND_CONTEXT_DRIFT
#: (policies sent, update_mask, revoke_on after). The default is [TOKEN_REUSE].
REVOKE_ON_UPDATES: list[tuple[str, A.SecurityPolicies, list[str], list[int]]] = [
    # Empty under the whole-message path: left alone, as unset scalar policies are. It
    # was emptied, turning off revoke-on-token-reuse unasked.
    ("whole message, list left empty", A.SecurityPolicies(enforce_rotation=True), [], [REUSE]),
    (
        "whole message named, list left empty",
        A.SecurityPolicies(enforce_rotation=True),
        ["security_policies"],
        [REUSE],
    ),
    (
        "whole message named, list given",
        A.SecurityPolicies(revoke_on=[DRIFT, REUSE]),
        ["security_policies"],
        [DRIFT, REUSE],
    ),
    (
        "its own path, list given",
        A.SecurityPolicies(revoke_on=[DRIFT]),
        ["security_policies.revoke_on"],
        [DRIFT],
    ),
    ("its own path empties it", A.SecurityPolicies(), ["security_policies.revoke_on"], []),
    (
        "both paths empty it",
        A.SecurityPolicies(track_usage=False),
        ["security_policies", "security_policies.revoke_on"],
        [],
    ),
]


@pytest.mark.parametrize(
    ("name", "policies", "paths", "revoke_on"),
    REVOKE_ON_UPDATES,
    ids=[c[0] for c in REVOKE_ON_UPDATES],
)
async def test_revoke_on_is_emptied_only_by_its_own_path(
    server: Harness, name: str, policies: A.SecurityPolicies, paths: list[str], revoke_on: list[int]
) -> None:
    before = await server.admin.admin.GetConfig(A.GetConfigRequest())
    after = await update(server, A.Config(security_policies=policies), paths)
    assert list(after.security_policies.revoke_on) == revoke_on
    unchanged = A.SecurityPolicies()
    unchanged.CopyFrom(before.security_policies)
    unchanged.MergeFrom(policies)  # the scalars sent, over the ones before
    del unchanged.revoke_on[:]
    del after.security_policies.revoke_on[:]
    assert after.security_policies == unchanged


async def test_policy_changes_apply_at_once(server: Harness) -> None:
    issued = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="device")
    )
    await update(
        server,
        A.Config(security_policies=A.SecurityPolicies(track_usage=False)),
        ["security_policies.track_usage"],
    )
    for _ in range(60):  # more than max usage (50): not counted
        response = await server.admin.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=issued.token)
        )
        assert response.validation.valid


# --- audit ---------------------------------------------------------------------------------


async def _activity(server: Harness) -> None:
    key = (
        await server.admin.keys.GenerateKey(
            keys_pb2.GenerateKeyRequest(type="session", user_id="u1", reveal=True)
        )
    ).key
    await server.admin.keys.RotateKey(keys_pb2.RotateKeyRequest(key_id=key.id, reason="r1"))
    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=key.id, reason="r2"))
    await update(
        server,
        A.Config(security_policies=A.SecurityPolicies(rate_limit_per_handle=50)),
        ["security_policies.rate_limit_per_handle"],
    )


async def test_every_change_is_audited_with_actor_reason_and_peer(server: Harness) -> None:
    await _activity(server)
    await fails(
        server.client("kt_api-access_" + "1" * 43 + "AAAAAA").keys.ListKeys(
            keys_pb2.ListKeysRequest()
        )
    )
    events = (
        await server.admin.admin.ListAuditEvents(A.ListAuditEventsRequest(page_size=100))
    ).events
    actions = [e.action for e in events]
    for expected in (
        "config.initialize",
        "token.create",
        "key.generate",
        "key.rotate",
        "key.remove",
        "config.update",
        "auth.failure",
    ):
        assert expected in actions, actions
    rotate = next(e for e in events if e.action == "key.rotate")
    assert (rotate.principal, rotate.role, rotate.reason) == (
        "admin",
        resources_pb2.ROLE_ADMIN,
        "r1",
    )
    assert rotate.peer == "127.0.0.1"
    generate = next(e for e in events if e.action == "key.generate")
    assert generate.user_id == "u1" and generate.details["revealed_version"] == "1"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert all(e.previous_hash == p.hash for p, e in itertools.pairwise(events))

    only_keys = await server.admin.admin.ListAuditEvents(
        A.ListAuditEventsRequest(action="key.rotate")
    )
    assert [e.action for e in only_keys.events] == ["key.rotate"]


async def test_audit_pages_walk_the_log(server: Harness) -> None:
    await _activity(server)
    seen, token = [], ""
    while True:
        page = await server.admin.admin.ListAuditEvents(
            A.ListAuditEventsRequest(page_size=2, page_token=token, descending=True)
        )
        seen += [e.sequence for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == page.total_size


async def test_the_audit_chain_verifies(server: Harness) -> None:
    await _activity(server)
    result = await server.admin.admin.VerifyAuditLog(A.VerifyAuditLogRequest())
    assert result.valid and result.entries_checked >= 6 and result.first_broken_sequence == 0
    assert len(result.head_hash) == 32


@pytest.mark.sqlite_only
@pytest.mark.parametrize("tamper", ["edit a reason", "delete a middle row", "delete the last row"])
async def test_tampering_with_the_audit_log_is_detected(server: Harness, tamper: str) -> None:
    await _activity(server)
    await server.stop()
    db = sqlite_utils.Database(server.data_dir / "keyturn.db")
    last = max(r["sequence"] for r in db["audit"].rows)
    if tamper == "edit a reason":
        db["audit"].update(3, {"reason": "nothing to see"})
        broken = 3
    elif tamper == "delete a middle row":
        db["audit"].delete(3)
        broken = 4
    else:
        db["audit"].delete(last)
        broken = last
    db.close()
    await server.start()
    result = await server.admin.admin.VerifyAuditLog(A.VerifyAuditLogRequest())
    assert not result.valid
    assert result.first_broken_sequence == broken
    assert result.problem


@pytest.mark.sqlite_only
async def test_a_broken_audit_log_is_counted_said_once_and_shown_in_health(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    await _activity(server)
    await server.stop()
    db = sqlite_utils.Database(server.data_dir / "keyturn.db")
    db["audit"].update(3, {"reason": "nothing to see"})
    db.close()
    await server.start(metrics_listen="127.0.0.1:0")
    for _ in range(3):  # an auditor's cron, or an on-call trying again
        result = await server.admin.admin.VerifyAuditLog(A.VerifyAuditLogRequest())
        assert not result.valid and result.first_broken_sequence == 3
    said = [r for r in caplog.records if r.getMessage().startswith("the audit log failed")]
    assert len(said) == 1 and said[0].category == "security", said  # type: ignore[attr-defined]
    text = await scrape_now(server)
    assert sample(text, 'keyturn_audit_verifications_total{result="broken"}') == 3
    assert sample(text, 'keyturn_audit_verifications_total{result="intact"}') == 0
    health = (await server.admin.admin.GetHealth(A.GetHealthRequest(component="store"))).health
    [reason] = health.components[0].reasons
    assert "audit log failed verification (3 times" in reason and "entry 3" in reason, reason


# --- health --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "named"),
    [("operator", True), ("admin", True), ("service", False), ("auditor", False)],
)
async def test_the_replicas_host_and_pid_in_health_are_for_operators(
    server: Harness, role: str, named: bool
) -> None:
    """A replica is named after its host and process ("db-7.internal:4121") unless
    --replica-name says otherwise; health told every tenant those of this replica and of
    the scheduler's leader."""
    caller = server.admin if role == "admin" else await server.client_for(role)
    health = (await caller.admin.GetHealth(A.GetHealthRequest(component="scheduler"))).health
    [scheduler] = health.components
    host = socket.gethostname()
    assert (host in scheduler.scheduler.replica) is named, scheduler
    assert (host in scheduler.scheduler.lease_holder) is named, scheduler
    assert scheduler.scheduler.leader  # what a tenant needs: this one schedules


async def test_health_reports_each_component_with_figures(server: Harness) -> None:
    await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))
    await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
    await server.advance(timedelta(hours=22, minutes=30))  # session key: inside its window
    health = (await server.admin.admin.GetHealth(A.GetHealthRequest())).health
    assert health.status == A.SERVING_STATUS_SERVING
    parts = {c.name: c for c in health.components}
    assert set(parts) == {"store", "scheduler", "keys", "handles"}
    assert parts["keys"].keys.expiring == 1 and parts["keys"].keys.rotation_queue == 1
    assert parts["handles"].handles.expired == 1
    backend = {"sqlite": "sqlite", "postgres": "postgresql"}[BACKEND]
    assert parts["store"].store.writable and parts["store"].store.backend == backend
    assert parts["scheduler"].scheduler.running
    assert parts["scheduler"].scheduler.next_deadline.ToDatetime() > server.clock.now().replace(
        tzinfo=None
    )
    only = (await server.admin.admin.GetHealth(A.GetHealthRequest(component="keys"))).health
    assert [c.name for c in only.components] == ["keys"]
    bad = await fails(server.admin.admin.GetHealth(A.GetHealthRequest(component="disk")))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
