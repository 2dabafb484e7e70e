"""Failed calls become KeyturnError subclasses carrying the server's ErrorInfo reason and
metadata, BadRequest field violations and RetryInfo delay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import keyturn
from keyturn import AsyncClient, FieldViolation
from keyturn._errors import from_rpc_error
from keyturn.v1 import admin_pb2
from keyturn_server.clock import ManualClock
from tests.harness import Harness

MISSING_KEY = "key_" + "a" * 16


async def test_an_unknown_key_is_not_found_with_its_reason(client: AsyncClient) -> None:
    with pytest.raises(keyturn.NotFound) as caught:
        await client.get_key(MISSING_KEY)
    error = caught.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "KEY_NOT_FOUND" and error.domain == "keyturn.dev"
    assert MISSING_KEY in error.message
    assert str(error).startswith("NOT_FOUND (KEY_NOT_FOUND): ")
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)


async def test_a_malformed_id_names_the_field(client: AsyncClient) -> None:
    with pytest.raises(keyturn.InvalidArgument) as caught:
        await client.rotate_key("key_nope")
    assert [v.field for v in caught.value.field_violations] == ["key_id"]


async def test_an_invalid_key_type_lists_every_violation(client: AsyncClient) -> None:
    config = await client.get_config()
    draft = admin_pb2.Config()
    custom = draft.key_types["custom"]
    custom.algorithm = "aes-256-gcm"
    custom.key_length = 32
    custom.rotation_interval.FromTimedelta(timedelta(days=30))
    custom.warning_threshold.FromTimedelta(timedelta(days=40))  # longer than the rotation
    custom.max_lifetime.FromTimedelta(timedelta(days=10))  # shorter than the rotation

    with pytest.raises(keyturn.InvalidArgument) as caught:
        await client.update_config(draft, etag=config.etag, update_mask=["key_types.custom"])
    assert set(caught.value.field_violations) == {
        FieldViolation(
            "config.key_types.custom.warning_threshold", "must be shorter than rotation_interval"
        ),
        FieldViolation("config.key_types.custom.rotation_interval", "must not exceed max_lifetime"),
    }


async def test_a_role_without_the_right_is_permission_denied(server: Harness) -> None:
    auditor = await server.client_for("auditor")
    async with AsyncClient(server.address, token=auditor.token) as client:
        with pytest.raises(keyturn.PermissionDenied) as caught:
            await client.generate_key("encryption")
    assert caught.value.reason == "ROLE_NOT_ALLOWED"
    assert caught.value.metadata["role"] == "AUDITOR"


@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "MISSING_CREDENTIALS"), ("not-a-keyturn-token", "MALFORMED_ACCESS_TOKEN")],
    ids=["no-token", "foreign-token"],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    server: Harness, token: str | None, reason: str
) -> None:
    async with AsyncClient(server.address, token=token) as client:
        with pytest.raises(keyturn.Unauthenticated) as caught:
            await client.list_keys()
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "token",
    ["kt_admin_secret\n", "kt_admin_s\u00e9cret", "kt_admin_secret\x01", " kt_admin_secret"],
    ids=["line-break", "non-ascii", "control", "leading-space"],
)
def test_a_token_a_header_cannot_carry_is_refused_without_repeating_it(token: str) -> None:
    """grpc would fail each call with its own ExecuteBatchError (no KeyturnError, a
    traceback in the CLI): say what is wrong once, when the client is made."""
    with pytest.raises(ValueError, match="bearer token") as caught:
        AsyncClient("127.0.0.1:1", token=token)
    assert "kt_admin" not in str(caught.value)


async def test_restoring_a_key_that_was_not_removed_is_a_failed_precondition(
    client: AsyncClient,
) -> None:
    key = (await client.generate_key("encryption")).key
    with pytest.raises(keyturn.FailedPrecondition) as caught:
        await client.restore_key(key.id)
    assert caught.value.reason == "KEY_NOT_REMOVED"


async def test_a_caller_over_its_rate_gets_retry_after(tmp_path: Path) -> None:
    server = await Harness(tmp_path / "data", ManualClock()).start(
        caller_rate_limit=1.0, caller_burst=2
    )
    try:
        async with AsyncClient(server.address, token=server.admin_token) as client:
            await client.list_keys()
            await client.list_keys()
            with pytest.raises(keyturn.ResourceExhausted) as caught:
                await client.list_keys()
    finally:
        await server.stop()
    assert caught.value.reason == "CALLER_RATE_LIMITED"
    assert caught.value.retry_after == timedelta(seconds=1)


def failed_call(code: grpc.StatusCode, *details: object) -> grpc.aio.AioRpcError:
    """A failed call as grpc.aio reports it, with google.rpc details in the trailer."""
    packed = []
    for detail in details:
        entry = any_pb2.Any()
        entry.Pack(detail)  # type: ignore[arg-type]
        packed.append(entry)
    status = status_pb2.Status(code=code.value[0], message="it failed", details=packed)
    trailer = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailer, "it failed")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, keyturn.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, keyturn.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, keyturn.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, keyturn.FailedPrecondition),
        (grpc.StatusCode.ABORTED, keyturn.Aborted),
        (grpc.StatusCode.OUT_OF_RANGE, keyturn.OutOfRange),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, keyturn.ResourceExhausted),
        (grpc.StatusCode.UNAUTHENTICATED, keyturn.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, keyturn.PermissionDenied),
        (grpc.StatusCode.DATA_LOSS, keyturn.DataLoss),
        (grpc.StatusCode.UNAVAILABLE, keyturn.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, keyturn.DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, keyturn.Cancelled),
        (grpc.StatusCode.INTERNAL, keyturn.ServerError),
        (grpc.StatusCode.UNKNOWN, keyturn.ServerError),
        (grpc.StatusCode.UNIMPLEMENTED, keyturn.ServerError),
    ],
    ids=lambda value: value.name if isinstance(value, grpc.StatusCode) else "",
)
def test_each_status_code_has_its_exception_class(
    code: grpc.StatusCode, expected: type[keyturn.KeyturnError]
) -> None:
    info = error_details_pb2.ErrorInfo(reason="SOME_REASON", domain="keyturn.dev")
    error = from_rpc_error(failed_call(code, info))
    assert type(error) is expected and isinstance(error, keyturn.KeyturnError)
    assert error.code == code and error.reason == "SOME_REASON"


def test_details_are_unpacked_whatever_their_order() -> None:
    error = from_rpc_error(
        failed_call(
            grpc.StatusCode.INVALID_ARGUMENT,
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field="type", description="bad")
                ]
            ),
            error_details_pb2.ErrorInfo(reason="X", metadata={"k": "v"}),
        )
    )
    assert isinstance(error, keyturn.InvalidArgument)
    assert error.field_violations == (FieldViolation("type", "bad"),)
    assert error.reason == "X" and error.metadata == {"k": "v"}


def test_a_status_without_details_still_maps_by_code() -> None:
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connect failed"
    )
    error = from_rpc_error(bare)
    assert isinstance(error, keyturn.Unavailable)
    assert error.reason == "" and error.message == "connect failed"
    assert str(error) == "UNAVAILABLE: connect failed"
