"""Plaintext off loopback: the listener rule as a table, the settings that apply it, and a
real `keyturn serve` that refuses with one line."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from keyturn_server.app import App
from keyturn_server.flags import add_serve_arguments
from keyturn_server.listeners import Verdict, check_listener, check_metrics_listener
from keyturn_server.settings import Settings, SettingsError, resolve
from tests.harness import MASTER_KEY
from tests.pki import Authority

SILENT, WARNS, REFUSED = "silent", "warns", "refused"


def outcome(verdict: Verdict) -> str:
    assert not (verdict.refusal and verdict.warning)
    return REFUSED if verdict.refusal else WARNS if verdict.warning else SILENT


@pytest.mark.parametrize(
    ("address", "tls", "allow_plaintext", "production", "expected"),
    [
        ("127.0.0.1:50051", False, False, True, SILENT),
        ("[::1]:50051", False, False, True, SILENT),
        ("localhost:50051", False, False, True, SILENT),
        ("127.8.9.10:50051", False, False, True, SILENT),
        ("0.0.0.0:50051", True, False, True, SILENT),
        ("10.1.2.3:50051", True, False, False, SILENT),
        ("0.0.0.0:50051", False, False, True, REFUSED),
        ("[::]:50051", False, False, True, REFUSED),
        (":50051", False, False, True, REFUSED),
        ("keyturn.internal:50051", False, False, True, REFUSED),
        ("0.0.0.0:50051", False, True, True, WARNS),
        ("0.0.0.0:50051", False, False, False, WARNS),
        ("0.0.0.0:50051", False, True, False, WARNS),
    ],
    ids=[
        "loopback-v4",
        "loopback-v6",
        "localhost",
        "loopback-range",
        "tls-everywhere",
        "tls-dev",
        "production-plaintext-all-interfaces",
        "production-plaintext-all-v6",
        "production-plaintext-empty-host",
        "production-plaintext-hostname",
        "production-behind-a-proxy",
        "dev-plaintext",
        "dev-behind-a-proxy",
    ],
)
def test_plaintext_off_loopback_is_refused_in_production_and_loud_elsewhere(
    address: str, tls: bool, allow_plaintext: bool, production: bool, expected: str
) -> None:
    verdict = check_listener(
        address, what="gRPC", tls=tls, allow_plaintext=allow_plaintext, production=production
    )
    assert outcome(verdict) == expected
    if verdict.refusal:
        assert address in verdict.refusal
        assert "--tls-cert" in verdict.refusal and "--allow-plaintext" in verdict.refusal
    if verdict.warning:
        assert address in verdict.warning


def test_the_rule_names_the_listener_it_judges() -> None:
    verdict = check_listener(
        "0.0.0.0:8080", what="HTTP", tls=False, allow_plaintext=False, production=True
    )
    assert verdict.refusal is not None and verdict.refusal.startswith(
        "refusing to serve HTTP in plaintext on 0.0.0.0:8080"
    )


@pytest.mark.parametrize(
    ("address", "allow_remote", "expected"),
    [
        ("127.0.0.1:9090", False, SILENT),
        ("[::1]:9090", False, SILENT),
        ("0.0.0.0:9090", False, REFUSED),
        ("10.0.0.5:9090", False, REFUSED),
        ("0.0.0.0:9090", True, WARNS),
    ],
    ids=["loopback", "loopback-v6", "all-interfaces", "one-interface", "allowed"],
)
def test_metrics_stay_on_loopback_unless_allowed(
    address: str, allow_remote: bool, expected: str
) -> None:
    verdict = check_metrics_listener(address, allow_remote=allow_remote)
    assert outcome(verdict) == expected
    if verdict.refusal:
        assert "--allow-remote-metrics" in verdict.refusal


def settings(argv: list[str], env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return resolve(parser.parse_args(argv), {"MASTER_KEY": MASTER_KEY, **(env or {})})


def test_production_refuses_plaintext_on_all_interfaces() -> None:
    with pytest.raises(SettingsError, match="--allow-plaintext") as refused:
        settings(["--production", "--listen", "0.0.0.0:50051"])
    assert "KEYTURN_ALLOW_PLAINTEXT=1" in str(refused.value)
    with pytest.raises(SettingsError, match="refusing to serve gRPC in plaintext"):
        settings(["--listen", "0.0.0.0:50051"], {"KEYTURN_ENV": "production"})


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--allow-plaintext"], {}),
        ([], {"KEYTURN_ALLOW_PLAINTEXT": "1"}),
        ([], {"KEYTURN_ALLOW_PLAINTEXT": "true"}),
    ],
    ids=["flag", "env-1", "env-true"],
)
def test_allow_plaintext_lets_production_serve_behind_a_proxy_with_a_warning(
    argv: list[str], env: dict[str, str]
) -> None:
    resolved = settings(["--production", "--listen", "0.0.0.0:50051", *argv], env)
    assert resolved.allow_plaintext
    [warning] = resolved.warnings()
    assert "TLS-terminating proxy" in warning and "0.0.0.0:50051" in warning


def test_a_development_server_off_loopback_warns_loudly() -> None:
    [warning] = settings(["--listen", "0.0.0.0:50051"]).warnings()
    assert warning.startswith("PLAINTEXT gRPC ON 0.0.0.0:50051")
    assert settings(["--listen", "127.0.0.1:50051"]).warnings() == []


def test_an_allow_variable_that_is_not_a_boolean_is_refused() -> None:
    with pytest.raises(SettingsError, match="KEYTURN_ALLOW_PLAINTEXT='maybe'"):
        settings([], {"KEYTURN_ALLOW_PLAINTEXT": "maybe"})


def test_an_empty_mounted_certificate_directory_is_named_in_the_refusal(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as refused:
        settings(
            ["--listen", "0.0.0.0:50051"],
            {"KEYTURN_ENV": "production", "KEYTURN_TLS_DIR": str(tmp_path)},
        )
    message = str(refused.value)
    assert f"mount a directory holding tls.crt and tls.key at {tmp_path}" in message
    assert "--allow-plaintext" in message
    assert "\n" not in message


def test_a_mounted_certificate_directory_turns_tls_on(tmp_path: Path) -> None:
    Authority().write(tmp_path)
    resolved = settings(
        ["--listen", "0.0.0.0:50051"],
        {"KEYTURN_ENV": "production", "KEYTURN_TLS_DIR": str(tmp_path)},
    )
    assert resolved.tls and resolved.tls_cert == tmp_path / "tls.crt"
    assert resolved.warnings() == []
    explicit = tmp_path / "other"
    explicit.mkdir()
    (explicit / "a.crt").write_bytes(b"")
    resolved = settings(
        ["--tls-cert", str(explicit / "a.crt"), "--tls-key", str(explicit / "a.key")],
        {"KEYTURN_TLS_DIR": str(tmp_path)},
    )
    assert resolved.tls_cert == explicit / "a.crt"  # flags win over the directory


def test_half_a_certificate_in_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_bytes(Authority().issue().cert)
    with pytest.raises(SettingsError, match=r"tls\.key is missing"):
        settings([], {"KEYTURN_TLS_DIR": str(tmp_path)})


def test_certificate_paths_come_from_the_environment(tmp_path: Path) -> None:
    resolved = settings(
        [],
        {
            "KEYTURN_TLS_CERT": str(tmp_path / "c.pem"),
            "KEYTURN_TLS_KEY": str(tmp_path / "k.pem"),
            "KEYTURN_CLIENT_CA": str(tmp_path / "ca.pem"),
        },
    )
    assert resolved.certificate is not None
    assert resolved.certificate.client_ca == tmp_path / "ca.pem"


def test_metrics_off_loopback_need_their_own_permission() -> None:
    with pytest.raises(SettingsError, match="--allow-remote-metrics"):
        settings(["--metrics-listen", "0.0.0.0:9090"])
    # A TLS proxy in front of the API says nothing about who may scrape metrics.
    with pytest.raises(SettingsError, match="--allow-remote-metrics"):
        settings(["--metrics-listen", "0.0.0.0:9090", "--allow-plaintext"])
    allowed = settings(["--metrics-listen", "0.0.0.0:9090"], {"KEYTURN_ALLOW_REMOTE_METRICS": "1"})
    assert allowed.allow_remote_metrics and not allowed.metrics_per_resource
    assert any("without authentication" in w for w in allowed.warnings())
    assert settings(["--metrics-per-resource"]).metrics_per_resource


def serve(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("KEYTURN_", "MASTER_KEY"))
    }
    return subprocess.run(
        [sys.executable, "-m", "keyturn_server", "serve", "--data-dir", str(tmp_path / "d"), *args],
        env={**environment, "MASTER_KEY": MASTER_KEY, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            ["--listen", "0.0.0.0:0"],
            {"KEYTURN_ENV": "production"},
            "keyturn: refusing to serve gRPC in plaintext on 0.0.0.0:0 in production",
        ),
        (
            ["--production", "--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"],
            {},
            "keyturn: refusing to serve metrics on 0.0.0.0:0",
        ),
    ],
    ids=["plaintext-grpc", "remote-metrics"],
)
def test_keyturn_serve_refuses_with_one_line_and_no_traceback(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    process = serve(args, env, tmp_path)
    assert process.returncode == 2
    assert process.stderr.splitlines() == [process.stderr.strip()]  # one line
    assert process.stderr.startswith(message)
    assert "Traceback" not in process.stderr
    assert not (tmp_path / "d").exists()  # refused before anything was created


async def test_a_development_server_off_loopback_logs_the_warning_at_start(
    tmp_path: Path, logs_hold_no_secrets: io.StringIO
) -> None:
    app = App(Settings(listen=("0.0.0.0:0",), data_dir=tmp_path / "d", master_key=MASTER_KEY))
    try:
        await app.start()
    finally:
        await app.stop(timedelta(seconds=0.1))
    lines = [json.loads(line) for line in logs_hold_no_secrets.getvalue().splitlines()]
    [warning] = [line for line in lines if line["msg"].startswith("PLAINTEXT gRPC ON 0.0.0.0:0")]
    assert warning["level"] == "warning" and warning["category"] == "security"
