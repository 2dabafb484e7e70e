"""The operator commands (`keyturn keys|handles|config|audit|health|watch`) against a
real server, read the way an operator reads them: the printed table or JSON and the
exit code."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf import json_format

from keyturn import AsyncClient
from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server.cli import main
from keyturn_server.cli.operator import connect
from keyturn_server.clock import ManualClock
from tests.client import downtime
from tests.harness import Harness
from tests.process import free_port


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, object]:
        found: dict[str, object] = json.loads(self.out)
        return found


Keyturn = Callable[..., Awaitable[Run]]


@pytest.fixture
def keyturn(
    server: Harness,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Keyturn:
    """`keyturn ARGS...` with KEYTURN_ADDRESS and KEYTURN_TOKEN set, run on a worker thread
    (the server shares the test's event loop)."""
    monkeypatch.setenv("KEYTURN_ADDRESS", server.address)
    monkeypatch.setenv("KEYTURN_TOKEN", server.admin_token)
    monkeypatch.chdir(tmp_path)

    async def run(*argv: str, stdin: str = "") -> Run:
        capsys.readouterr()
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


async def test_keys_generate_list_get_rotate_remove_restore(keyturn: Keyturn) -> None:
    generated = await keyturn("keys", "generate", "encryption", "--metadata", "purpose=billing")
    assert generated.code == 0 and "aes-256-gcm" in generated.out
    key_id = generated.out.splitlines()[1].split()[0]
    assert key_id.startswith("key_") and "metadata: purpose=billing" in generated.out

    listed = await keyturn("keys", "list", "--type", "encryption")
    assert listed.out.splitlines()[0].split()[:4] == ["ID", "TYPE", "ALGORITHM", "STATUS"]
    assert key_id in listed.out

    fetched = await keyturn("keys", "get", key_id, "--json")
    key = json_format.Parse(fetched.out, keys_pb2.ListKeysResponse().keys.add())
    assert key.id == key_id and key.metadata["purpose"] == "billing"

    rotated = await keyturn("keys", "rotate", key_id, "--reason", "drill")
    assert rotated.code == 0 and rotated.out.splitlines()[1].split()[4] == "2"
    removed = await keyturn("keys", "remove", key_id, "--json")
    assert removed.json()["status"] == "KEY_STATUS_REMOVED"
    restored = await keyturn("keys", "restore", key_id, "--json")
    assert restored.json()["status"] == "KEY_STATUS_ACTIVE"


async def test_a_leaked_version_is_disabled_and_enabled_again(
    keyturn: Keyturn, client: AsyncClient
) -> None:
    key_id = (await client.generate_key("signing")).key.id
    signed = await client.sign(key_id, b"invoice")
    await client.rotate_key(key_id)
    disabled = await keyturn(
        "keys", "disable-version", key_id, "1", "--reason", "INC-7 leaked", "--user-id", "alice"
    )
    assert disabled.code == 0, disabled.err
    states = {line.split()[0]: line.split()[1] for line in disabled.out.splitlines()[4:]}
    assert states == {"1": "disabled", "2": "enabled"}
    refused = await keyturn("keys", "disable-version", key_id, "2")
    assert refused.code == 1
    assert refused.err.startswith("keyturn: FAILED_PRECONDITION (VERSION_IS_PRIMARY): ")
    for usage in (("disable-version", key_id, "one"), ("enable-version", key_id)):
        with pytest.raises(SystemExit) as ended:  # argparse's usage error
            await keyturn("keys", *usage)
        assert ended.value.code == 2
    enabled = await keyturn("keys", "enable-version", key_id, "1", "--json")
    assert enabled.json()["versions"][0]["state"] == "KEY_VERSION_STATE_ENABLED"
    assert (await client.verify(key_id, b"invoice", signed.signature)).valid
    audited = await client.list_audit_events(action="key.version.disable")
    assert [(e.resource_id, e.reason, e.user_id) for e in audited.events] == [
        (key_id, "INC-7 leaked", "alice")
    ]


async def test_rotating_every_key_of_a_type_shows_progress(
    keyturn: Keyturn, client: AsyncClient
) -> None:
    ids = [(await client.generate_key("session")).key.id for _ in range(12)]
    await client.generate_key("api")
    removed = (await client.generate_key("session")).key.id
    await client.remove_key(removed)

    result = await keyturn("keys", "rotate", "--all-of-type", "session", "--json")
    assert result.code == 0
    assert "rotating: 12/12" in result.err.splitlines()
    assert len(result.err.splitlines()) <= 11  # a line per tenth, not per key
    listed = json_format.Parse(result.out, keys_pb2.ListKeysResponse())
    assert sorted(k.id for k in listed.keys) == sorted(ids)
    assert {k.primary_version async for k in client.iter_keys(type="session", status="active")} == {
        2
    }


async def test_handles_generate_validate_rotate_and_remove(keyturn: Keyturn) -> None:
    issued = await keyturn(
        "handles",
        "generate",
        "workflow",
        "--ip",
        "192.168.1.100",
        "--context",
        "workflow=etl",
        "--json",
    )
    response = json_format.Parse(issued.out, handles_pb2.GenerateHandleResponse())
    handle_id, token = response.handle.id, response.token
    assert response.handle.context["workflow"] == "etl"

    valid = await keyturn("handles", "validate", "-", "--ip", "192.168.1.100", stdin=token + "\n")
    assert valid.code == 0 and valid.out.startswith(f"valid: {handle_id} (workflow), 99 uses left")
    refused = await keyturn("handles", "validate", "kt_not_a_token")
    assert refused.code == 3 and refused.out == "refused: malformed\n"

    rotated = await keyturn("handles", "rotate", handle_id, "--reason", "drill")
    assert rotated.code == 0 and "token (shown once): " in rotated.out
    listed = await keyturn("handles", "list", "--type", "workflow")
    assert handle_id in listed.out and "1/100" in listed.out

    removed = await keyturn("handles", "remove", handle_id, "--reason", "leaked")
    assert removed.code == 0 and "revoked" in removed.out
    shown = await keyturn("handles", "get", handle_id, "--json")
    assert shown.json()["status"] == "HANDLE_STATUS_REVOKED"


async def test_every_live_handle_of_a_compromised_owner_is_removed_by_one_command(
    keyturn: Keyturn, server: Harness
) -> None:
    victim = await server.client_for("service", "victim")
    bystander = await server.client_for("service", "bystander")
    issued = [
        await victim.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
        for _ in range(12)
    ]
    kept = await bystander.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="session"))
    await victim.handles.RemoveHandle(
        handles_pb2.RemoveHandleRequest(handle_id=issued[0].handle.id)
    )

    result = await keyturn(
        "handles", "remove", "--all-of-owner", "victim", "--reason", "owner compromised", "--json"
    )
    assert result.code == 0 and "removing: 11/11" in result.err.splitlines()
    listed = json_format.Parse(result.out, handles_pb2.ListHandlesResponse())
    assert sorted(h.id for h in listed.handles) == sorted(i.handle.id for i in issued[1:])
    for made in (*issued, kept):
        check = await server.admin.handles.ValidateHandle(
            handles_pb2.ValidateHandleRequest(token=made.token)
        )
        assert check.validation.valid is (made is kept)
    audited = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(action="handle.revoke", principal="admin")
    )
    assert {e.reason for e in audited.events} == {"owner compromised"}
    assert len(audited.events) == 11
    assert (await keyturn("handles", "remove")).code == 2  # neither ids nor an owner


async def test_a_handle_secret_on_the_command_line_is_warned_about(keyturn: Keyturn) -> None:
    """A handle's token is as secret as a bearer token, and as visible in ps and the shell
    history when given as an argument: the operator is told to use "-" (stdin) instead."""
    issued = await keyturn("handles", "generate", "workflow", "--json")
    response = json_format.Parse(issued.out, handles_pb2.GenerateHandleResponse())
    given = await keyturn("handles", "validate", response.token)
    assert given.code == 0
    assert given.err.count("visible to other users") == 1 and "standard input" in given.err
    assert response.token not in given.err
    by_token = await keyturn("handles", "rotate", "--by-token", response.token)
    assert by_token.code == 0 and by_token.err.count("visible to other users") == 1
    piped = await keyturn("handles", "validate", "-", stdin=response.token + "\n")
    assert piped.code == 0 and "visible" not in piped.err


async def test_config_set_by_flags_by_policy_and_from_a_file(
    keyturn: Keyturn, tmp_path: Path
) -> None:
    current = (await keyturn("config", "get", "--json")).json()
    etag = str(current["etag"])

    custom = await keyturn(
        "config", "set", "--key-type", "archive", "--algorithm", "aes-256-gcm",
        "--key-length", "32", "--rotation-interval", "10d", "--warning-threshold", "2d",
        "--max-lifetime", "30d", "--etag", etag, "--reason", "cold storage",
    )  # fmt: skip
    assert custom.code == 0, custom.err
    assert "archive     aes-256-gcm  32      10d       2d       30d" in custom.out

    stale = await keyturn("config", "set", "--policy", "rate_limit_per_handle=200", "--etag", etag)
    assert stale.code == 1 and "ABORTED (ETAG_MISMATCH)" in stale.err

    fresh = (await keyturn("config", "get", "--json")).json()
    change = tmp_path / "change.json"
    change.write_text(
        json.dumps({"securityPolicies": {"trackUsage": False}, "etag": fresh["etag"]})
    )
    applied = await keyturn("config", "set", str(change), "--json")
    config = json_format.Parse(applied.out, admin_pb2.Config())
    assert not config.security_policies.track_usage and "archive" in config.key_types

    invalid = await keyturn(
        "config", "set", "--handle-type", "batch", "--etag", config.etag, "--algorithm", "md5"
    )
    assert invalid.code == 1 and "config.handle_types.batch.algorithm" in invalid.err


async def test_audit_list_and_verify(keyturn: Keyturn) -> None:
    await keyturn("keys", "generate", "api", "--user-id", "user123")
    listed = await keyturn("audit", "list", "--action", "key.generate")
    header, row = listed.out.splitlines()
    assert header.split()[:3] == ["SEQ", "TIME", "ACTION"] and "user123" in row
    verified = await keyturn("audit", "verify")
    assert verified.code == 0 and verified.out.startswith("audit log intact: ")
    assert "retention" not in verified.out


async def test_audit_verify_says_where_a_pruned_log_starts(
    keyturn: Keyturn, server: Harness
) -> None:
    await keyturn("keys", "generate", "api")
    await server.advance(timedelta(days=401))  # past the default audit retention
    verified = await keyturn("audit", "verify")
    assert verified.code == 0
    assert re.match(
        r"audit log intact: \d+ entries \(from entry \d+: those before it passed the audit "
        r"retention\), head [0-9a-f]{64}$",
        verified.out.strip(),
    ), verified.out


async def test_health_prints_each_component(keyturn: Keyturn) -> None:
    result = await keyturn("health")
    assert result.code == 0 and result.out.startswith("SERVING  keyturn ")
    components = {line.split()[0] for line in result.out.splitlines()[3:]}
    assert components == {"keys", "handles", "store", "scheduler"}


async def test_watch_prints_events_and_resumes_after_a_restart(
    keyturn: Keyturn, server: Harness, client: AsyncClient
) -> None:
    watching = asyncio.ensure_future(
        keyturn("watch", "keys", "--resume-after", "0", "--count", "4", "--json")
    )
    before = [(await client.generate_key("api")).key.id for _ in range(2)]
    await asyncio.sleep(0.3)
    await downtime.restart_in_place(server)
    async with AsyncClient(server.address, token=server.admin_token) as again:
        after = [(await again.generate_key("api")).key.id for _ in range(2)]

    result = await asyncio.wait_for(watching, 20)
    events = [json.loads(line) for line in result.out.splitlines()]
    assert [e["key"]["id"] for e in events] == [*before, *after]
    assert [int(e["sequence"]) for e in events] == sorted({int(e["sequence"]) for e in events})
    assert "resuming after sequence" in result.err


async def test_watch_lines_are_readable(keyturn: Keyturn, client: AsyncClient) -> None:
    key = (await client.generate_key("signing")).key
    await client.rotate_key(key.id, reason="drill")
    result = await keyturn("watch", "keys", "--resume-after", "0", "--count", "2")
    created, rotated = result.out.splitlines()
    assert created.split()[3:5] == ["CREATED", key.id]
    assert rotated.split()[3:5] == ["ROTATED", key.id] and "version 2" in rotated


async def test_errors_are_reported_with_their_reason_and_exit_code(keyturn: Keyturn) -> None:
    missing = await keyturn("keys", "get", "key_" + "c" * 16)
    assert missing.code == 1 and missing.err.startswith("keyturn: NOT_FOUND (KEY_NOT_FOUND): ")
    malformed = await keyturn("keys", "get", "key_nope")
    assert malformed.code == 1 and "  key_id: not a key id" in malformed.err
    usage = await keyturn("keys", "generate", "api", "--metadata", "no-equals-sign")
    assert usage.code == 2 and "is not KEY=VALUE" in usage.err
    nothing = await keyturn("keys", "rotate")
    assert nothing.code == 2


def test_no_server_at_the_address_is_said_in_one_line_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens: the command says so at once, not after its retries' half minute."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEYTURN_ADDRESS", raising=False)
    monkeypatch.setenv("KEYTURN_TOKEN", "unused")
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    code = main(["keys", "list", "--address", address])
    waited = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and f"no Keyturn server answers at {address}" in err, err
    assert "connection refused" in err and "keyturn serve" in err
    assert waited < 10  # the connect deadline is 3 s; the old behaviour waited ~27 s


@pytest.mark.parametrize(
    "argv",
    [
        ("health", "--connect-timeout", "-1"),
        ("health", "--connect-timeout", "nan"),
        ("health", "--connect-timeout", "inf"),
        ("health", "--connect-timeout", "0"),
        ("audit", "list", "--limit", "-1"),
        ("audit", "list", "--limit", "0"),
        ("keys", "list", "--limit", "0"),
        ("handles", "list", "--limit", "-5"),
        ("watch", "keys", "--count", "0"),
        ("watch", "handles", "--count", "-2"),
        ("watch", "keys", "--duration", "-1"),
        ("watch", "keys", "--duration", "nan"),
        ("watch", "keys", "--duration", "0"),
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_wait_or_limit_that_means_nothing_is_a_usage_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
) -> None:
    """Not "no Keyturn server answers within -1s", nor an empty table and success."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEYTURN_TOKEN", "unused")
    with pytest.raises(SystemExit) as ended:
        main([*argv, "--address", f"127.0.0.1:{free_port()}"])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and f"argument {argv[-2]}: " in err, err


def test_a_connect_timeout_from_the_environment_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEYTURN_TOKEN", "unused")
    monkeypatch.setenv("KEYTURN_CONNECT_TIMEOUT", "nan")
    assert main(["health", "--address", f"127.0.0.1:{free_port()}"]) == 2
    assert "KEYTURN_CONNECT_TIMEOUT='nan'" in capsys.readouterr().err


def namespace(**given: object) -> argparse.Namespace:
    defaults = {"address": None, "token": None, "token_file": None, "connect_timeout": None}
    defaults |= {"tls": False, "ca": None, "cert": None, "key": None, "server_name": None}
    defaults |= {"plaintext": False}
    return argparse.Namespace(**(defaults | given))


FROM_ENV = {"KEYTURN_ADDRESS": "10.1.1.1:1", "KEYTURN_TOKEN": "from-env"}


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({}, {}, ("127.0.0.1:50051", "from-data-dir")),
        ({}, FROM_ENV, ("10.1.1.1:1", "from-env")),
        ({"token_file": Path("other.token")}, FROM_ENV, ("10.1.1.1:1", "from-file")),
        ({"address": "h:2", "token": "from-flag"}, FROM_ENV, ("h:2", "from-flag")),
    ],
    ids=["defaults", "environment", "token-file-beats-environment", "flags-beat-all"],
)
async def test_address_and_token_come_from_flags_then_environment_then_defaults(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: dict[str, object],
    env: dict[str, str],
    expected: tuple[str, str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin.token").write_text("from-data-dir\n")
    (tmp_path / "other.token").write_text("from-file\n")
    async with connect(namespace(**flags), env) as client:
        assert client.address == expected[0]
        assert dict(client._metadata)["authorization"] == f"Bearer {expected[1]}"


@pytest.mark.parametrize(
    "address",
    ["10.1.1.1:1", "keyturn.example.com:443", "dns:///127.0.0.1:50051"],
    ids=["remote-ip", "remote-name", "resolver-target"],
)
async def test_the_local_admin_token_file_is_sent_only_to_a_loopback_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    """./data/admin.token is the admin token of the server on this machine: a command
    aimed at another server (a mistyped --address, a KEYTURN_ADDRESS left over) must not
    hand it over. A token given on purpose still goes anywhere."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin.token").write_text("local-admin\n")
    async with connect(namespace(address=address), {}) as client:
        assert "authorization" not in dict(client._metadata)
    async with connect(namespace(address=address), {"KEYTURN_TOKEN": "given"}) as client:
        assert dict(client._metadata)["authorization"] == "Bearer given"
    async with connect(namespace(address="localhost:50051"), {}) as client:
        assert dict(client._metadata)["authorization"] == "Bearer local-admin"


async def test_a_token_file_with_a_stray_character_is_a_usage_error_not_a_traceback(
    keyturn: Keyturn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEYTURN_TOKEN")
    (tmp_path / "pasted.token").write_text("kt_admin_s\u00e9cret\n")
    done = await keyturn("health", "--token-file", str(tmp_path / "pasted.token"))
    assert done.code == 2 and "bearer token" in done.err
    assert "kt_admin" not in done.err + done.out


def _own_address() -> str | None:
    """An address of this machine that is not loopback, if it has one (the source address
    it would use towards a documentation network: nothing is sent)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        host: str = probe.getsockname()[0]
    return None if host.startswith("127.") else host


async def test_plaintext_off_loopback_only_when_asked(
    tmp_path: Path, clock: ManualClock, keyturn_plain: Keyturn
) -> None:
    """Off loopback the CLI speaks TLS unless told --plaintext (a TLS-terminating proxy
    beside the operator): a plaintext server there answers only to that flag."""
    host = _own_address()
    if host is None:
        pytest.skip("this machine has no non-loopback address")
    server = Harness(tmp_path / "data", clock)
    await server.start(listen=("0.0.0.0:0",))
    try:
        address = f"{host}:{server.app.ports[0]}"  # type: ignore[union-attr]
        flags = ("--address", address, "--token", server.admin_token, "--connect-timeout", "2")
        refused = await keyturn_plain("health", *flags)
        assert refused.code == 1 and "no Keyturn server answers" in refused.err
        plain = await keyturn_plain("health", *flags, "--plaintext")
        assert plain.code == 0, plain.err
        from_env = await keyturn_plain("health", *flags, env={"KEYTURN_PLAINTEXT": "1"})
        assert from_env.code == 0, from_env.err
        both = await keyturn_plain("health", *flags, "--plaintext", "--server-name", "x")
        assert both.code == 2 and "--plaintext cannot be combined" in both.err
    finally:
        await server.stop()


@pytest.fixture
def keyturn_plain(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Keyturn:
    """`keyturn ARGS...` with no address or token from the environment."""
    monkeypatch.delenv("KEYTURN_ADDRESS", raising=False)
    monkeypatch.delenv("KEYTURN_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)

    async def run(*argv: str, env: dict[str, str] | None = None) -> Run:
        capsys.readouterr()
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        code = await asyncio.to_thread(main, list(argv))
        for name in env or {}:
            monkeypatch.delenv(name)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


async def test_a_token_on_the_command_line_works_and_is_warned_about(
    keyturn: Keyturn, server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any user of the host reads a process's arguments (ps, /proc/<pid>/cmdline), and
    the shell keeps them: the operator is told, once, without the token repeated."""
    monkeypatch.delenv("KEYTURN_TOKEN")
    done = await keyturn("health", "--token", server.admin_token)
    assert done.code == 0, done.err
    assert done.err.count("visible to other users") == 1 and "KEYTURN_TOKEN" in done.err
    assert server.admin_token not in done.err + done.out
    quiet = await keyturn("health", "--token-file", str(server.data_dir / "admin.token"))
    assert quiet.code == 0 and "visible" not in quiet.err
