"""What can be checked of the container without a container engine: every file the
Dockerfile copies exists, its command is the installed console script, it runs as a
non-root user with the data on a volume, its settings refuse plaintext and take a mounted
certificate, and the compose file confines it. scripts/test-container.sh runs it."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyturn_server.cli import parser
from keyturn_server.probe import probe
from keyturn_server.settings import SettingsError, resolve
from tests.container_smoke import hardening
from tests.harness import MASTER_KEY, Harness
from tests.pki import Authority

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_every_file_the_dockerfile_copies_exists() -> None:
    copies = [rest for word, rest in instructions() if word == "COPY" and "--from" not in rest]
    assert copies
    for rest in copies:
        *sources, _ = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "data" in ignored


def test_the_command_is_the_installed_console_script_serving_on_all_interfaces() -> None:
    [cmd] = [rest for word, rest in instructions() if word == "CMD"]
    argv = eval(cmd)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts and scripts[argv[0]] == "keyturn_server.cli:main"
    args = parser().parse_args(argv[1:])
    assert args.command == "serve" and args.listen == ["0.0.0.0:50051"]


def test_it_runs_as_a_non_root_user_with_data_on_a_volume_and_a_healthcheck() -> None:
    steps = dict(instructions())
    user, _, group = steps["USER"].partition(":")
    assert user.isdigit() and int(user) > 0 and group.isdigit()  # numeric: runAsNonRoot
    assert "/data" in steps["VOLUME"]
    assert re.search(r"DATA_DIR=/data", steps["ENV"])
    assert re.search(r"KEYTURN_ENV=production", steps["ENV"])
    assert re.search(r"KEYTURN_TLS_DIR=/tls", steps["ENV"])
    assert "keyturn_server.probe" in steps["HEALTHCHECK"]
    assert eval(steps["ENTRYPOINT"])[0].endswith("tini")  # signals reach the server


def test_the_base_image_is_an_argument_used_by_both_stages() -> None:
    steps = instructions()
    assert ("ARG", "BASE=python:3.11-slim") in steps
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms == ["${BASE} AS build", "${BASE}"]


def image_settings(tls_dir: Path) -> dict[str, str]:
    """The environment the image gives `keyturn serve`, with the master key supplied."""
    env = dict(pair.split("=", 1) for pair in shlex.split(dict(instructions())["ENV"]))
    return {**env, "KEYTURN_TLS_DIR": str(tls_dir), "MASTER_KEY": MASTER_KEY}


def test_the_image_refuses_plaintext_and_serves_a_mounted_certificate(tmp_path: Path) -> None:
    [cmd] = [rest for word, rest in instructions() if word == "CMD"]
    args = parser().parse_args(eval(cmd)[1:])
    with pytest.raises(
        SettingsError, match=f"mount a directory holding tls.crt and tls.key at {tmp_path}"
    ):
        resolve(args, image_settings(tmp_path))
    Authority().write(tmp_path)
    settings = resolve(args, image_settings(tmp_path))
    assert settings.production and settings.tls and settings.warnings() == []
    behind_a_proxy = resolve(
        args, {**image_settings(tmp_path / "none"), "KEYTURN_ALLOW_PLAINTEXT": "1"}
    )
    assert not behind_a_proxy.tls and behind_a_proxy.warnings()


def test_compose_requires_the_master_key_mounts_tls_and_confines_the_container() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["keyturn"]
    assert service["build"]["context"] == "."
    assert any(e.startswith("MASTER_KEY=${MASTER_KEY:?") for e in service["environment"])
    assert any(v.endswith(":/data") for v in service["volumes"])
    assert "./tls:/tls:ro" in service["volumes"]
    assert "keyturn-data" in compose["volumes"]
    assert hardening() == [
        "--read-only",
        "--tmpfs=/tmp:size=16m,mode=1777",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges:true",
    ]


async def test_the_healthcheck_probe_tells_a_serving_server_from_none(server: Harness) -> None:
    assert await asyncio.to_thread(probe, server.address)
    assert not await asyncio.to_thread(probe, "127.0.0.1:1", "", 0.5)


# --- the systemd unit (deploy/systemd/keyturn.service) ------------------------------------

UNIT = ROOT / "deploy" / "systemd" / "keyturn.service"


def unit_directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().replace("\\\n", " ").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            found.setdefault(name.strip(), []).append(value.strip())
    return found


def test_the_systemd_unit_runs_a_command_keyturn_accepts() -> None:
    """Its command line parses and resolves to a production server with TLS; it starts
    after the clock is synchronised, reloads with SIGHUP, stops with SIGTERM inside a
    timeout past the grace period and the stop watch, and dumps no core."""
    unit = unit_directives()
    command = shlex.split(unit["ExecStart"][0])
    assert command[:2] == ["/opt/keyturn/bin/keyturn", "serve"]
    resolved = resolve(parser().parse_args(command[1:]), {"MASTER_KEY": MASTER_KEY}).check()
    assert resolved.production and resolved.tls and resolved.workers >= 1
    assert "time-sync.target" in unit["After"][0].split()
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["KillSignal"] == ["SIGTERM"] and int(unit["TimeoutStopSec"][0]) >= 10 + 8
    assert unit["LimitCORE"] == ["0"] and unit["NoNewPrivileges"] == ["yes"]


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # Its binary must exist to be verified: this interpreter stands in for it.
    copy = tmp_path / "keyturn.service"
    copy.write_text(UNIT.read_text().replace("/opt/keyturn/bin/keyturn", sys.executable))
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def lock_module() -> object:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import lock  # scripts/lock.py
    finally:
        sys.path.pop(0)
    return lock


def test_the_image_installs_its_dependencies_from_the_hash_checked_lock() -> None:
    lock: Any = lock_module()
    assert lock.check() == []
    runs = [argument for kind, argument in instructions() if kind == "RUN"]
    assert any("--require-hashes" in r and "requirements/runtime.txt" in r for r in runs)
    # The local distributions add nothing unpinned: their dependencies came from the lock.
    assert any("--no-deps" in r and "./clients/python ." in r for r in runs)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda text: re.sub(r"^grpcio==[^ ]+", "grpcio==1.0.0", text, flags=re.M), "outside"),
        (lambda text: re.sub(r"^orjson==", "orjsonx==", text, flags=re.M), "orjson is required"),
        (
            lambda text: re.sub(
                r"(^psycopg-pool==[^ ]+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+",
                r"\1",
                text,
                flags=re.M,
            ),
            "psycopg-pool==",
        ),
    ],
)
def test_the_lock_check_fails_when_the_lock_and_the_ranges_disagree(
    tmp_path: Path, edit: Any, problem: str
) -> None:
    lock: Any = lock_module()
    edited = tmp_path / "runtime.txt"
    edited.write_text(edit(lock.LOCK.read_text()))
    assert edited.read_text() != lock.LOCK.read_text()
    assert any(problem in p for p in lock.check(edited)), lock.check(edited)
