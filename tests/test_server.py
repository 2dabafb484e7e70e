"""The server as operators meet it: `keyturn serve`, health, reflection, shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from keyturn.v1 import keys_pb2
from keyturn_server.domain import tokens
from tests.harness import MASTER_KEY, Harness, fails
from tests.process import free_port


async def test_health_service_reports_each_service(server: Harness) -> None:
    stub = health_pb2_grpc.HealthStub(server.channel())
    for service in (
        "",
        "keyturn.v1.KeyService",
        "keyturn.v1.HandleService",
        "keyturn.v1.AdminService",
    ):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_the_three_services_without_a_token(server: Harness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = set()
    async for response in responses:
        names = {s.name for s in response.list_services_response.service}
        break
    assert {"keyturn.v1.KeyService", "keyturn.v1.HandleService", "keyturn.v1.AdminService"} <= names


async def test_calls_without_a_token_are_unauthenticated(server: Harness) -> None:
    anonymous = server.client(None)
    failed = await fails(anonymous.keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert failed.code == grpc.StatusCode.UNAUTHENTICATED
    failed = await fails(
        server.client("kt_api-access_" + "A" * 43 + "000000").keys.ListKeys(
            keys_pb2.ListKeysRequest()
        )
    )
    assert failed.code == grpc.StatusCode.UNAUTHENTICATED
    assert failed.reason == "MALFORMED_ACCESS_TOKEN"  # checksum wrong: no store lookup
    unknown = server.client(tokens.new_token(tokens.ACCESS_TOKEN_TYPE, 32))
    failed = await fails(unknown.keys.ListKeys(keys_pb2.ListKeysRequest()))
    assert failed.code == grpc.StatusCode.UNAUTHENTICATED
    assert failed.reason == "INVALID_ACCESS_TOKEN"  # well formed, looked up, not found


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()  # reap it and close its pipes


def _start(
    args: list[str], env: dict[str, str], procs: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "keyturn_server", "serve", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(process)
    return process


def _wait_listening(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    output = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output += line
        if line.startswith("keyturn listening on"):
            return output
    raise AssertionError(
        f"server did not start: {output} {process.stderr.read() if process.stderr else ''}"
    )


def assert_serving(port: int) -> None:
    """The standard health service of the server on ``port`` answers SERVING."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_keyturn_serve_honours_port_and_stops_cleanly_on_sigterm(
    tmp_path: Path, serve: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    process = _start(
        ["--data-dir", str(tmp_path / "d")],
        {"PORT": str(port), "MASTER_KEY": MASTER_KEY, "LOG_LEVEL": "info"},
        serve,
    )
    output = _wait_listening(process)
    token = (tmp_path / "d" / "admin.token").read_text().strip()
    assert token in output  # printed once, on first start
    assert f"127.0.0.1:{port}" in output

    assert_serving(port)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    logged = process.stderr.read()
    assert token not in logged  # never in the logs
    last = json.loads(logged.strip().splitlines()[-1])  # and it says it stopped, with what
    assert last["msg"] == "keyturn stopped"
    assert {"streams_ended", "drain_seconds", "flush", "scheduler_lease_released"} <= set(last)

    second = _start(
        ["--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}"],
        {"MASTER_KEY": MASTER_KEY},
        serve,
    )
    assert token not in _wait_listening(second)  # not printed again
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=30) == 0


def test_sighup_reloads_and_keeps_serving(
    tmp_path: Path, serve: list[subprocess.Popen[str]]
) -> None:
    """SIGHUP's default action ends a process at once: a server started from a terminal
    that closed, or reloaded the usual way (systemd's ExecReload=kill -HUP, logrotate),
    dropped its calls in flight and lost what it had not flushed. Keyturn takes it as
    Vault does: read the certificate and --client-identities again, and go on serving."""
    port = free_port()
    process = _start(
        ["--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}"],
        {"MASTER_KEY": MASTER_KEY, "LOG_LEVEL": "info"},
        serve,
    )
    _wait_listening(process)
    process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert process.poll() is None, "SIGHUP ended the server"
    assert_serving(port)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert process.stderr is not None
    lines = [json.loads(line) for line in process.stderr.read().strip().splitlines()]
    assert any(line["msg"].startswith("SIGHUP") for line in lines), lines


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--insecure-no-auth", "--listen", "0.0.0.0:0"], {}, "only allowed when every listen"),
        (["--production"], {}, "MASTER_KEY is required in production"),
        ([], {"KEYTURN_ENV": "production"}, "MASTER_KEY is required in production"),
        ([], {"MASTER_KEY": "short"}, "at least 16 characters"),
        (["--tls-cert", "/nonexistent.pem"], {}, "--tls-cert and --tls-key go together"),
    ],
    ids=[
        "insecure-on-all-interfaces",
        "production-flag",
        "production-env",
        "short-key",
        "half-tls",
    ],
)
def test_keyturn_serve_refuses_unsafe_settings_with_one_clear_line(
    tmp_path: Path,
    serve: list[subprocess.Popen[str]],
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    environment = {k: v for k, v in os.environ.items() if k not in ("MASTER_KEY", "KEYTURN_ENV")}
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "keyturn_server",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            "127.0.0.1:0",
            *args,
        ],
        env={**environment, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode != 0
    assert message in process.stderr
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize("case", ["a file in its place", "a read-only filesystem"])
def test_a_data_directory_that_cannot_be_used_stops_the_start_with_one_line(
    tmp_path: Path, case: str
) -> None:
    data_dir = tmp_path / "d"
    mounted = False
    if case == "a file in its place":
        data_dir.write_text("not a directory")
    else:
        data_dir.mkdir()
        bind = ["mount", "--bind", str(data_dir), str(data_dir)]
        if subprocess.run(bind, capture_output=True, check=False).returncode != 0:
            pytest.skip("a read-only filesystem needs root (mount --bind)")
        mounted = True
        readonly = ["mount", "-o", "remount,ro,bind", str(data_dir)]
        subprocess.run(readonly, capture_output=True, check=True)
    try:
        process = subprocess.run(
            [
                sys.executable,
                "-m",
                "keyturn_server",
                "serve",
                "--data-dir",
                str(data_dir),
                "--listen",
                "127.0.0.1:0",
            ],
            env={**os.environ, "MASTER_KEY": MASTER_KEY},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        if mounted:
            subprocess.run(["umount", str(data_dir)], check=False)
    assert process.returncode == 1
    assert "Traceback" not in process.stderr, process.stderr
    [line] = process.stderr.strip().splitlines()
    assert line.startswith(f"keyturn: cannot start: the data directory {data_dir} cannot be used")
    assert "--data-dir" in line
