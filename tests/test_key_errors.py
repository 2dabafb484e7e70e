"""Every bad input to KeyService gets the right status, a reason and field details."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from keyturn.v1 import keys_pb2
from tests.harness import Harness, fails

UNKNOWN_ID = "key_aaaaaaaaaaaaaaaa"
BIG = b"x" * (64 * 1024 + 1)

Request = Callable[[dict[str, str]], tuple[str, Any]]


async def _keys(server: Harness) -> dict[str, str]:
    ids = {}
    for type_name in ("encryption", "signing", "session"):
        response = await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type=type_name))
        ids[type_name] = response.key.id
    return ids


INVALID = grpc.StatusCode.INVALID_ARGUMENT
CASES: list[tuple[str, Request, grpc.StatusCode, str]] = [
    (
        "unknown type",
        lambda k: ("GenerateKey", keys_pb2.GenerateKeyRequest(type="bogus")),
        INVALID,
        "type",
    ),
    ("missing type", lambda k: ("GenerateKey", keys_pb2.GenerateKeyRequest()), INVALID, "type"),
    (
        "too many metadata entries",
        lambda k: (
            "GenerateKey",
            keys_pb2.GenerateKeyRequest(
                type="encryption", metadata={str(i): "v" for i in range(33)}
            ),
        ),
        INVALID,
        "metadata",
    ),
    (
        "oversized metadata value",
        lambda k: (
            "GenerateKey",
            keys_pb2.GenerateKeyRequest(type="encryption", metadata={"k": "v" * 257}),
        ),
        INVALID,
        "metadata['k']",
    ),
    (
        "oversized user_id",
        lambda k: (
            "GenerateKey",
            keys_pb2.GenerateKeyRequest(type="encryption", user_id="u" * 129),
        ),
        INVALID,
        "user_id",
    ),
    (
        "control characters in user_id",
        lambda k: ("GenerateKey", keys_pb2.GenerateKeyRequest(type="encryption", user_id="a\nb")),
        INVALID,
        "user_id",
    ),
    ("empty key id", lambda k: ("GetKey", keys_pb2.GetKeyRequest()), INVALID, "key_id"),
    (
        "malformed key id",
        lambda k: ("GetKey", keys_pb2.GetKeyRequest(key_id="../etc")),
        INVALID,
        "key_id",
    ),
    (
        "unknown key id",
        lambda k: ("GetKey", keys_pb2.GetKeyRequest(key_id=UNKNOWN_ID)),
        grpc.StatusCode.NOT_FOUND,
        "",
    ),
    (
        "bad page token",
        lambda k: ("ListKeys", keys_pb2.ListKeysRequest(page_token="garbage!")),
        INVALID,
        "page_token",
    ),
    (
        "negative page size",
        lambda k: ("ListKeys", keys_pb2.ListKeysRequest(page_size=-1)),
        INVALID,
        "page_size",
    ),
    (
        "unknown status enum",
        lambda k: ("ListKeys", keys_pb2.ListKeysRequest(status=99)),
        INVALID,
        "status",
    ),
    (
        "plaintext over 64 KiB",
        lambda k: ("Encrypt", keys_pb2.EncryptRequest(key_id=k["encryption"], plaintext=BIG)),
        INVALID,
        "plaintext",
    ),
    (
        "encrypt with a signing key",
        lambda k: ("Encrypt", keys_pb2.EncryptRequest(key_id=k["signing"], plaintext=b"x")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
    ),
    (
        "sign with an encryption key",
        lambda k: ("Sign", keys_pb2.SignRequest(key_id=k["encryption"], data=b"x")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
    ),
    (
        "garbage ciphertext",
        lambda k: (
            "Decrypt",
            keys_pb2.DecryptRequest(key_id=k["encryption"], ciphertext=b"\x07nonsense"),
        ),
        INVALID,
        "ciphertext",
    ),
    (
        "ciphertext naming an unknown version",
        lambda k: (
            "Decrypt",
            keys_pb2.DecryptRequest(
                key_id=k["encryption"], ciphertext=b"\x01\x00\x00\x00\x09" + b"z" * 40
            ),
        ),
        grpc.StatusCode.NOT_FOUND,
        "",
    ),
    (
        "mac over 4 KiB",
        lambda k: (
            "VerifyMac",
            keys_pb2.VerifyMacRequest(key_id=k["session"], data=b"d", mac=b"m" * 5000),
        ),
        INVALID,
        "mac",
    ),
    (
        "public key of a MAC key",
        lambda k: ("GetPublicKey", keys_pb2.GetPublicKeyRequest(key_id=k["session"])),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
    ),
    (
        "public key of a missing version",
        lambda k: ("GetPublicKey", keys_pb2.GetPublicKeyRequest(key_id=k["signing"], version=7)),
        grpc.StatusCode.NOT_FOUND,
        "",
    ),
    (
        "restore an active key",
        lambda k: ("RestoreKey", keys_pb2.RestoreKeyRequest(key_id=k["encryption"])),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
    ),
    (
        "export a non-exportable key",
        lambda k: ("ExportKey", keys_pb2.ExportKeyRequest(key_id=k["encryption"])),
        grpc.StatusCode.FAILED_PRECONDITION,
        "",
    ),
    (
        "oversized reason",
        lambda k: (
            "RotateKey",
            keys_pb2.RotateKeyRequest(key_id=k["encryption"], reason="r" * 513),
        ),
        INVALID,
        "reason",
    ),
]


@pytest.mark.parametrize(("name", "build", "code", "field"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_gets_a_clear_status(
    server: Harness, name: str, build: Request, code: grpc.StatusCode, field: str
) -> None:
    keys = await _keys(server)
    method, request = build(keys)
    failed = await fails(getattr(server.admin.keys, method)(request))
    assert failed.code == code, failed
    assert failed.reason, "every error carries an ErrorInfo reason"
    assert failed.message and "Traceback" not in failed.message
    if field:
        assert field in failed.violations, failed.violations


async def test_a_request_that_is_not_protobuf_is_invalid_argument(server: Harness) -> None:
    channel = server.channel()
    raw = channel.unary_unary("/keyturn.v1.KeyService/GetKey")
    failed = await fails(raw(b"\xff\xff\xff\xff", metadata=server.admin.metadata))
    assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.reason == "MALFORMED_REQUEST"


async def test_a_removed_key_keeps_its_data_when_the_restore_fails(server: Harness) -> None:
    keys = await _keys(server)
    await server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=keys["session"]))
    twice = await fails(
        server.admin.keys.RemoveKey(keys_pb2.RemoveKeyRequest(key_id=keys["session"]))
    )
    assert twice.code == grpc.StatusCode.FAILED_PRECONDITION
    key = await server.admin.keys.GetKey(keys_pb2.GetKeyRequest(key_id=keys["session"]))
    assert key.HasField("destroy_time")
