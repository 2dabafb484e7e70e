"""`keyturn token create|list|revoke` on the data directory, while the server runs."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from keyturn.v1 import keys_pb2
from keyturn_server.cli import local
from keyturn_server.domain.access import Role
from tests.harness import MASTER_KEY, SECRETS, Harness, fails
from tests.test_backup import keyturn as run_keyturn


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


async def test_tokens_made_on_the_command_line_work_at_once_and_revoke_at_once(
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
    refused = await fails(billing.keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED


async def test_the_command_line_refuses_the_name_the_server_audits_its_own_work_under(
    server: Harness,
) -> None:
    code, out, err = await keyturn(server, "create", "--role", "admin", "--name", "keyturn")
    assert (code, out) == (1, "") and "reserved" in err
    code, out, _ = await keyturn(server, "list")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["admin"]


def newer(database: Path) -> None:
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA user_version = 99")


def damaged(database: Path) -> None:
    database.write_bytes(b"not a database, " * 4096)


@pytest.mark.parametrize("store", [newer, damaged], ids=["newer-schema", "damaged"])
@pytest.mark.parametrize(
    "command",
    [
        ("token", "list"),
        ("token", "create", "--role", "admin", "--name", "breakglass"),
        ("master-key", "rotate"),
    ],
    ids=["token-list", "token-create", "master-key-rotate"],
)
def test_a_store_that_cannot_be_opened_is_said_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: Callable[[Path], None],
    command: tuple[str, ...],
) -> None:
    """As `keyturn serve` says it, not as a traceback."""
    (tmp_path / "data").mkdir()
    store(tmp_path / "data" / "keyturn.db")
    monkeypatch.setenv("NEW_MASTER_KEY", "cd" * 32)
    said = run_keyturn(*command, "--data-dir", str(tmp_path / "data"))
    assert said.returncode == 1, said.stdout
    assert said.stderr.count("\n") == 1 and "Traceback" not in said.stderr, said.stderr
    assert said.stderr.startswith(f"keyturn {command[0]}: ")


def test_an_operator_without_a_user_name_is_named_by_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A container run as an arbitrary uid has no passwd entry: getpass raises KeyError,
    and the token and master-key commands ended in a traceback."""

    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.setattr(local.getpass, "getuser", no_user)
    operator = local.local_operator()
    assert operator.name == f"local:uid-{os.getuid()}" and operator.role is Role.ADMIN
