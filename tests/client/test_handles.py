"""Every HandleService RPC through the typed client."""

from __future__ import annotations

from keyturn import AsyncClient
from keyturn.v1 import handles_pb2, resources_pb2

CONTEXT = {"ip": "192.168.1.100", "user_agent": "MyApp/1.0"}


async def test_generate_returns_the_handle_and_its_secret_once(client: AsyncClient) -> None:
    issued = await client.generate_handle(
        "workflow", context={"workflow": "data-processing", **CONTEXT}, user_id="user123"
    )
    assert issued.token and issued.handle.id.startswith("hdl_")
    assert issued.handle.max_usage == 100 and issued.handle.bound_ip == "192.168.1.100"

    fetched = await client.get_handle(issued.handle.id)
    assert fetched.id == issued.handle.id and issued.token not in str(fetched)
    listed = await client.list_handles(type="workflow", status="active")
    assert [h.id for h in listed.handles] == [issued.handle.id]


async def test_validation_counts_a_use_and_refusals_are_data(client: AsyncClient) -> None:
    issued = await client.generate_handle("workflow", context=CONTEXT)

    ok = (await client.validate_handle(issued.token, context=CONTEXT)).validation
    assert ok.valid and ok.handle_id == issued.handle.id and ok.remaining_uses == 99

    refused = (await client.validate_handle("not-a-token")).validation
    assert not refused.valid
    assert refused.reason in (
        handles_pb2.VALIDATION_REASON_MALFORMED,
        handles_pb2.VALIDATION_REASON_INVALID,
    )


async def test_rotation_by_id_keeps_the_previous_secret_valid_in_its_grace(
    client: AsyncClient,
) -> None:
    issued = await client.generate_handle("session")
    rotated = await client.rotate_handle(issued.handle.id, reason="drill")
    assert rotated.token != issued.token and rotated.handle.generation == 2
    assert rotated.HasField("previous_valid_until")

    previous = (await client.validate_handle(issued.token)).validation
    assert previous.valid and previous.rotated
    assert (await client.validate_handle(rotated.token)).validation.valid


async def test_rotation_by_token_and_removal(client: AsyncClient) -> None:
    issued = await client.generate_handle("api")
    rotated = await client.rotate_handle(token=issued.token)
    assert rotated.handle.id == issued.handle.id

    removed = await client.remove_handle(issued.handle.id, reason="leaked")
    assert removed.status == resources_pb2.HANDLE_STATUS_REVOKED
    after = (await client.validate_handle(rotated.token)).validation
    assert not after.valid


async def test_statistics_count_validations(client: AsyncClient) -> None:
    issued = await client.generate_handle("device")
    for _ in range(2):
        await client.validate_handle(issued.token)
    statistics = (await client.get_handle_statistics()).statistics
    assert statistics.total == 1 and statistics.validations == 2
    assert statistics.validations_succeeded == 2
