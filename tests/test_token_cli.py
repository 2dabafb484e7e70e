"""`keyturn token create|list|revoke` on the data directory, while the server runs."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta

import grpc

from keyturn.v1 import keys_pb2
from tests.harness import MASTER_KEY, SECRETS, Harness, fails


async def keyturn(server: Harness, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keyturn_server",
        "token",
        *args,
        "--data-dir",
        str(server.data_dir),
        env={**os.environ, "MASTER_KEY": MASTER_KEY},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_tokens_made_on_the_command_line_work_at_once_and_revoke_within_a_second(
    server: Harness,
) -> None:
    code, out, _ = await keyturn(server, "create", "--role", "service", "--name", "billing")
    assert code == 0
    token = out.strip()
    SECRETS.add(token)
    billing = server.client(token)
    key = (await billing.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="session"))).key
    assert key.owner == "billing"

    code, out, _ = await keyturn(server, "list")
    assert code == 0 and "billing" in out and "service" in out and token not in out

    code, _, err = await keyturn(server, "create", "--role", "service", "--name", "billing")
    assert code == 1 and "exists" in err

    code, out, _ = await keyturn(server, "revoke", "billing", "--reason", "rotated out")
    assert code == 0
    await server.advance(timedelta(seconds=1))  # the server may have it cached that long
    refused = await fails(billing.keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_command_line_refuses_the_name_the_server_audits_its_own_work_under(
    server: Harness,
) -> None:
    code, out, err = await keyturn(server, "create", "--role", "admin", "--name", "keyturn")
    assert (code, out) == (1, "") and "reserved" in err
    code, out, _ = await keyturn(server, "list")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["admin"]
