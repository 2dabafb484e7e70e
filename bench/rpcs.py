"""The RPCs that the benchmarks repeat, as ghz calls: Keyturn's and the echo baseline's."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench import baseline
from bench.fixtures import HANDLE_TYPE, KEY_TYPES, PLAINTEXT, Fixtures
from bench.ghz import KEYTURN_PROTO, Call

HANDLES_PROTO = KEYTURN_PROTO / "keyturn" / "v1" / "handles.proto"
KEYS_PROTO = KEYTURN_PROTO / "keyturn" / "v1" / "keys.proto"
VALIDATE = "ValidateHandle"


@dataclass(frozen=True)
class Rpc:
    """A labelled call, e.g. ``GenerateKey(signing)``."""

    label: str
    call: Call


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bearer(token: str) -> Mapping[str, str]:
    return {"authorization": f"Bearer {token}"}


def echo(payload: str) -> Call:
    """The baseline call, carrying a payload the size of a handle token."""
    return Call(
        baseline.ECHO_METHOD,
        [{"payload": payload}],
        baseline.PROTO_FILE,
        import_paths=(baseline.PROTO_DIR,),
    )


def validate(tokens: Sequence[str], admin_token: str) -> Rpc:
    """ValidateHandle round robin over ``tokens``."""
    return Rpc(
        VALIDATE,
        Call(
            "keyturn.v1.HandleService.ValidateHandle",
            [{"token": t} for t in tokens],
            HANDLES_PROTO,
            metadata=bearer(admin_token),
        ),
    )


def generate_key(key_type: str, admin_token: str) -> Rpc:
    return Rpc(
        f"GenerateKey({key_type})",
        Call(
            "keyturn.v1.KeyService.GenerateKey",
            [{"type": key_type}],
            KEYS_PROTO,
            metadata=bearer(admin_token),
        ),
    )


def generate_handle(admin_token: str) -> Rpc:
    return Rpc(
        f"GenerateHandle({HANDLE_TYPE})",
        Call(
            "keyturn.v1.HandleService.GenerateHandle",
            [{"type": HANDLE_TYPE}],
            HANDLES_PROTO,
            metadata=bearer(admin_token),
        ),
    )


def _key_call(label: str, method: str, request: Mapping[str, str], admin_token: str) -> Rpc:
    return Rpc(
        label,
        Call(
            f"keyturn.v1.KeyService.{method}", [request], KEYS_PROTO, metadata=bearer(admin_token)
        ),
    )


def per_rpc(fixtures: Fixtures, admin_token: str) -> list[Rpc]:
    """Every RPC of the per-RPC table, in the order printed."""
    data = _b64(PLAINTEXT)
    return [
        validate(fixtures.tokens, admin_token),
        *(generate_key(t, admin_token) for t in KEY_TYPES),
        generate_handle(admin_token),
        _key_call(
            "Encrypt",
            "Encrypt",
            {"key_id": fixtures.encryption_key, "plaintext": data},
            admin_token,
        ),
        _key_call(
            "Decrypt",
            "Decrypt",
            {"key_id": fixtures.encryption_key, "ciphertext": _b64(fixtures.ciphertext)},
            admin_token,
        ),
        _key_call("Sign", "Sign", {"key_id": fixtures.signing_key, "data": data}, admin_token),
        get_keys([fixtures.encryption_key], admin_token),
    ]


def get_keys(key_ids: Sequence[str], admin_token: str) -> Rpc:
    """GetKey round robin over ``key_ids``."""
    return Rpc(
        "GetKey",
        Call(
            "keyturn.v1.KeyService.GetKey",
            [{"key_id": k} for k in key_ids],
            KEYS_PROTO,
            metadata=bearer(admin_token),
        ),
    )
