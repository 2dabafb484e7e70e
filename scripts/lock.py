"""The server's runtime dependencies, pinned with hashes: requirements/runtime.txt.

pyproject.toml says which versions Keyturn works with (ranges); the container image and
`make setup` install exactly the versions in the lock, each checked against its hashes
(`pip install --require-hashes`). So an image built next month ships what CI tested,
and a release of a dependency replaced or compromised upstream within a range is refused
at install time instead of being built into the next image.

    python scripts/lock.py compile   # re-resolve (network; in a throwaway venv with pip-tools)
    python scripts/lock.py check     # offline: every runtime requirement pinned, in range, hashed

`check` runs in CI's lint stage, so a range changed in a pyproject without a new lock
fails there. `compile` is run by hand (it resolves against the package index, and
would give another answer whenever a dependency releases).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "runtime.txt"
PROJECTS = (ROOT / "pyproject.toml", ROOT / "clients" / "python" / "pyproject.toml")
#: Built from this repository, not taken from the index.
LOCAL = frozenset({"keyturn", "keyturn-server"})
PIP_TOOLS = "pip-tools>=7.4,<8"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\;]+)")


def requirements() -> list[Requirement]:
    """The runtime requirements of the server and of the client it ships with."""
    found: dict[str, Requirement] = {}
    for project in PROJECTS:
        for text in tomllib.loads(project.read_text())["project"]["dependencies"]:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if name in LOCAL:
                continue
            if name in found:  # the same package in both: both ranges hold
                found[name].specifier &= requirement.specifier
                found[name].extras |= requirement.extras
            else:
                found[name] = requirement
    return [found[name] for name in sorted(found)]


def pins(lock: Path = LOCK) -> dict[str, tuple[Version, int]]:
    """Package -> (pinned version, number of hashes) as the lock lists them."""
    found: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            found[current] = (Version(match.group(2)), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
    return found


def check(lock: Path = LOCK) -> list[str]:
    """What is wrong with the lock against the pyprojects; empty when nothing is."""
    if not lock.exists():
        return [f"{lock.relative_to(ROOT)} is missing: run python scripts/lock.py compile"]
    pinned = pins(lock)
    problems = []
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        if name not in pinned:
            problems.append(f"{name} is required ({requirement}) but not pinned")
            continue
        version, _ = pinned[name]
        if version not in requirement.specifier:
            problems.append(f"{name}=={version} is pinned, outside {requirement.specifier}")
    problems += [f"{name}=={v} has no --hash" for name, (v, n) in pinned.items() if n == 0]
    problems += [f"{name} is built here and must not be pinned" for name in LOCAL & set(pinned)]
    return problems


def compile_lock() -> None:
    with tempfile.TemporaryDirectory(prefix="keyturn-lock-") as scratch:
        tools = Path(scratch) / "venv"
        # Fixed argument lists: nothing here comes from outside the repository.
        subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)  # noqa: S603
        subprocess.run([tools / "bin" / "pip", "install", "-q", PIP_TOOLS], check=True)  # noqa: S603
        wanted = Path(scratch) / "runtime.in"
        wanted.write_text("".join(f"{r}\n" for r in requirements()))
        LOCK.parent.mkdir(exist_ok=True)
        subprocess.run(  # noqa: S603
            [
                tools / "bin" / "pip-compile",
                "--quiet",
                "--generate-hashes",
                "--allow-unsafe",
                "--strip-extras",
                "--no-header",
                # The lock names packages and hashes only, never where this machine
                # found them (its pip configuration may add indexes or directories).
                "--no-emit-index-url",
                "--no-emit-find-links",
                "--no-emit-trusted-host",
                "--annotation-style=line",
                "--output-file",
                str(LOCK),
                str(wanted),
            ],
            check=True,
        )
    body = LOCK.read_text().replace(str(wanted), "the pyprojects")
    LOCK.write_text(
        "# Keyturn's runtime dependencies, pinned with hashes (scripts/lock.py says why).\n"
        "# Made by `python scripts/lock.py compile`; checked by `python scripts/lock.py check`.\n"
        + body
    )


def main(argv: list[str]) -> int:
    if argv[1:] == ["compile"]:
        compile_lock()
        argv = [argv[0], "check"]
    if argv[1:] == ["check"]:
        problems = check()
        for problem in problems:
            print(f"requirements/runtime.txt: {problem}", file=sys.stderr)
        if not problems:
            print(f"requirements/runtime.txt: {len(pins())} packages pinned with hashes")
        return 1 if problems else 0
    print(__doc__.strip().splitlines()[0], "\nusage: lock.py compile|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
