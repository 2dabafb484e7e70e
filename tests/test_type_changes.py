"""A change to a handle type is for new handles: those issued before it keep working.

Before, changing a type's ``algorithm`` made every live handle of that type unusable:
its tokens were looked up under the new algorithm's digest only, so the owner's own
validations read INVALID, RotateHandle by token said TOKEN_NOT_VALID, and the refusals
counted against the owner until it was throttled (found by attacking the server).
"""

from __future__ import annotations

import grpc

from keyturn.v1 import admin_pb2, handles_pb2
from tests.harness import Client, Harness, fails
from tests.http_support import HttpClient

CONTEXT = {"ip": "192.0.2.10", "user_agent": "billing/1.0"}


async def set_algorithm(server: Harness, type_name: str, algorithm: str) -> None:
    config = await server.admin.admin.GetConfig(admin_pb2.GetConfigRequest())
    changed = admin_pb2.HandleTypeConfig()
    changed.CopyFrom(config.handle_types[type_name])
    changed.algorithm = algorithm
    await server.admin.admin.UpdateConfig(
        admin_pb2.UpdateConfigRequest(
            config=admin_pb2.Config(handle_types={type_name: changed}),
            update_mask={"paths": [f"handle_types.{type_name}"]},
            etag=config.etag,
        )
    )


async def issue(client: Client, type_name: str = "session") -> handles_pb2.GenerateHandleResponse:
    issued: handles_pb2.GenerateHandleResponse = await client.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type=type_name, context=CONTEXT)
    )
    return issued


async def validate(client: Client, token: str) -> handles_pb2.Validation:
    answer = await client.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=token, context=CONTEXT)
    )
    validation: handles_pb2.Validation = answer.validation
    return validation


async def test_a_handle_issued_before_its_types_algorithm_changed_still_validates(
    server: Harness,
) -> None:
    owner = await server.client_for("service", "billing")
    before = await issue(owner)  # session: sha256
    await set_algorithm(server, "session", "sha512")
    after = await issue(owner)

    old, new = await validate(owner, before.token), await validate(owner, after.token)

    assert old.valid and old.handle_id == before.handle.id
    assert new.valid and new.handle_id == after.handle.id
    assert old.remaining_uses == before.handle.max_usage - 1  # its use was counted


async def test_it_rotates_by_token_and_its_new_secret_validates(server: Harness) -> None:
    owner = await server.client_for("service", "billing")
    before = await issue(owner)
    await set_algorithm(server, "session", "sha384")

    rotated = await owner.handles.RotateHandle(
        handles_pb2.RotateHandleRequest(token=before.token, context=CONTEXT)
    )

    assert rotated.handle.id == before.handle.id
    assert (await validate(owner, rotated.token)).valid
    previous = await validate(owner, before.token)  # inside its grace period
    assert previous.valid and previous.rotated


async def test_the_specifications_routes_still_find_it_by_its_token(server: Harness) -> None:
    before = await issue(server.admin)
    await set_algorithm(server, "session", "sha512")
    api = HttpClient(server.http_url + "/api/key-management", server.admin_token)

    found = await api.get(f"/handles/{before.token}")

    assert found.status == 200, found.body
    assert found.body["handle"]["id"] == before.handle.id


async def test_an_unknown_token_of_a_changed_type_is_still_refused(server: Harness) -> None:
    owner = await server.client_for("service", "billing")
    issued = await issue(owner)
    await set_algorithm(server, "session", "sha512")
    forged = issued.token[:-8] + ("A" if issued.token[-8] != "A" else "B") + issued.token[-7:]

    refused = await validate(owner, forged)

    assert not refused.valid
    failure = await fails(
        owner.handles.RotateHandle(handles_pb2.RotateHandleRequest(token=forged, context=CONTEXT))
    )
    assert failure.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
