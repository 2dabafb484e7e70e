"""What can be checked of the container without a container engine: every file the
Dockerfile copies exists, its command is the installed console script, it runs as a
non-root user with the data on a volume, and the compose file passes the master key."""

from __future__ import annotations

import asyncio
import re
import shlex
import tomllib
from pathlib import Path

import yaml

from keyturn_server.cli import parser
from keyturn_server.probe import probe
from tests.harness import Harness

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
    assert steps["USER"] not in ("root", "0")
    assert "/data" in steps["VOLUME"]
    assert re.search(r"DATA_DIR=/data", steps["ENV"])
    assert re.search(r"KEYTURN_ENV=production", steps["ENV"])
    assert "keyturn_server.probe" in steps["HEALTHCHECK"]


def test_compose_passes_the_master_key_and_keeps_data_on_a_volume() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["keyturn"]
    assert service["build"] == "."
    assert any(e.startswith("MASTER_KEY=${MASTER_KEY") for e in service["environment"])
    assert any(v.endswith(":/data") for v in service["volumes"])
    assert "keyturn-data" in compose["volumes"]


async def test_the_healthcheck_probe_tells_a_serving_server_from_none(server: Harness) -> None:
    assert await asyncio.to_thread(probe, server.address)
    assert not await asyncio.to_thread(probe, "127.0.0.1:1", "", 0.5)
