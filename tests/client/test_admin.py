"""Every AdminService RPC through the typed client."""

from __future__ import annotations

from datetime import timedelta

import pytest

import keyturn
from keyturn import AsyncClient
from keyturn.v1 import admin_pb2, resources_pb2
from tests.harness import Harness


async def test_health_reports_every_component_serving(client: AsyncClient) -> None:
    health = (await client.get_health()).health
    assert health.status == admin_pb2.SERVING_STATUS_SERVING
    assert {c.name for c in health.components} >= {"keys", "handles", "store", "scheduler"}

    only_store = (await client.get_health("store")).health
    assert [c.name for c in only_store.components] == ["store"]


async def test_config_update_needs_the_current_etag(client: AsyncClient) -> None:
    config = await client.get_config()
    assert config.key_types["encryption"].algorithm == "aes-256-gcm"

    change = admin_pb2.Config()
    change.security_policies.rate_limit_per_handle = 250
    updated = await client.update_config(
        change,
        etag=config.etag,
        update_mask=["security_policies.rate_limit_per_handle"],
        reason="busier workflows",
    )
    assert updated.security_policies.rate_limit_per_handle == 250
    assert updated.etag != config.etag and updated.revision == config.revision + 1

    with pytest.raises(keyturn.Aborted) as stale:
        await client.update_config(change, etag=config.etag)
    assert stale.value.reason == "ETAG_MISMATCH"


async def test_audit_log_lists_what_happened_and_verifies(client: AsyncClient) -> None:
    key = (await client.generate_key("encryption", user_id="user123")).key

    listed = await client.list_audit_events(action="key.generate")
    assert [(e.action, e.resource_id, e.user_id) for e in listed.events] == [
        ("key.generate", key.id, "user123")
    ]
    verified = await client.verify_audit_log()
    assert verified.valid and verified.entries_checked >= 1


async def test_access_tokens_are_created_listed_used_and_revoked(
    server: Harness, client: AsyncClient
) -> None:
    created = await client.create_access_token("billing", "service", ttl=timedelta(days=1))
    assert created.access_token.role == resources_pb2.ROLE_SERVICE
    assert created.access_token.HasField("expire_time")

    async with AsyncClient(server.address, token=created.token) as billing:
        mine = (await billing.generate_key("encryption")).key
        assert mine.owner == "billing"

    names = [t.name for t in (await client.list_access_tokens()).access_tokens]
    assert "billing" in names
    revoked = await client.revoke_access_token("billing", reason="rotated out")
    assert revoked.HasField("revoke_time")
    assert "billing" not in [t.name for t in (await client.list_access_tokens()).access_tokens]
    everything = await client.list_access_tokens(include_revoked=True)
    assert "billing" in [t.name for t in everything.access_tokens]
