#!/usr/bin/env python3
"""One version for every artifact, kept in VERSION.

    scripts/version.py check        every copy equals VERSION, and CHANGELOG.md has it (CI)
    scripts/version.py set 0.2.0    write a new version into VERSION and every copy

Package formats each want the version inside their own manifest (pyproject.toml,
package.json, pom.xml), so those hold copies and CI fails when one drifts. The Go module
has no version in any file: it is the tag `clients/go/vX.Y.Z` (a module in a subdirectory
is tagged with that directory's path), printed by `check`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION_FILE = ROOT / "VERSION"
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")
GO_MODULE_DIR = "clients/go"


@dataclass(frozen=True)
class Copy:
    """One place that repeats the version: the first group of ``pattern`` in ``path``."""

    path: str
    pattern: str
    what: str

    def find(self) -> re.Match[str]:
        text = (ROOT / self.path).read_text()
        match = re.search(self.pattern, text, re.MULTILINE)
        if match is None:
            raise SystemExit(f"{self.path}: cannot find {self.what}")
        return match

    def write(self, version: str) -> None:
        file = ROOT / self.path
        text = file.read_text()
        match = self.find()
        file.write_text(text[: match.start(1)] + version + text[match.end(1) :])


COPIES = (
    Copy("pyproject.toml", r'^version = "([^"]+)"', "the server distribution's version"),
    Copy("pyproject.toml", r'"keyturn==([^"]+)"', "the client version the server requires"),
    Copy("clients/python/pyproject.toml", r'^version = "([^"]+)"', "the client's version"),
    Copy("server/keyturn_server/__init__.py", r'^__version__ = "([^"]+)"', "__version__"),
    Copy("Dockerfile", r"^ARG VERSION=(\S+)", "the image label's default"),
    Copy("clients/node/package.json", r'^  "version": "([^"]+)"', "the npm package version"),
    Copy("clients/node/package-lock.json", r'^  "version": "([^"]+)"', "the lockfile's version"),
    Copy(
        "clients/node/package-lock.json",
        r'^    "": \{\n      "name": "@keyturn/client",\n      "version": "([^"]+)"',
        "the lockfile's root package version",
    ),
    Copy(
        "examples/node/package-lock.json",
        r'"\.\./\.\./clients/node": \{\n\s*"name": "@keyturn/client",\n\s*"version": "([^"]+)"',
        "the example's locked client version",
    ),
    Copy(
        "clients/java/pom.xml",
        r"<artifactId>keyturn-client</artifactId>\n\s*<version>([^<]+)</version>",
        "the Maven artifact version",
    ),
    Copy(
        "examples/java/pom.xml",
        r"<artifactId>keyturn-client</artifactId>\n\s*<version>([^<]+)</version>",
        "the client version the Java example uses",
    ),
)


def current() -> str:
    version = VERSION_FILE.read_text().strip()
    if not SEMVER.match(version):
        raise SystemExit(f"VERSION: {version!r} is not MAJOR.MINOR.PATCH[-PRERELEASE]")
    return version


def check() -> int:
    version = current()
    drifted = [
        f"{c.path}: {c.what} is {c.find().group(1)}, VERSION is {version}"
        for c in COPIES
        if c.find().group(1) != version
    ]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    if not re.search(rf"^## \[{re.escape(version)}\]", changelog, re.MULTILINE):
        drifted.append(f"CHANGELOG.md: no '## [{version}]' section")
    for line in drifted:
        print(line, file=sys.stderr)
    if drifted:
        print("run: scripts/version.py set <version>", file=sys.stderr)
        return 1
    tag = f"{GO_MODULE_DIR}/v{version}"
    print(f"version {version}: {len(COPIES)} copies agree; the Go module's tag is {tag}")
    return 0


def set_version(version: str) -> int:
    if not SEMVER.match(version):
        raise SystemExit(f"{version!r} is not MAJOR.MINOR.PATCH[-PRERELEASE]")
    VERSION_FILE.write_text(version + "\n")
    for copy in COPIES:
        copy.write(version)
    print(f"version {version} written; add its section to CHANGELOG.md")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["check"]:
        return check()
    if len(argv) == 2 and argv[0] == "set":
        return set_version(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
