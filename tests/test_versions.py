"""One version for every artifact: scripts/version.py finds every copy, sets them all,
and fails when one drifts or CHANGELOG.md lacks the version's section."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("version", ROOT / "scripts" / "version.py")
assert _spec is not None and _spec.loader is not None
version = sys.modules["version"] = importlib.util.module_from_spec(_spec)  # for its dataclass
_spec.loader.exec_module(version)


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "version.py"), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_every_copy_in_the_repository_agrees_with_version() -> None:
    checked = run(ROOT, "check")
    assert checked.returncode == 0, checked.stderr
    assert f"clients/go/v{(ROOT / 'VERSION').read_text().strip()}" in checked.stdout


def test_set_writes_every_copy_and_check_catches_drift(tmp_path: Path) -> None:
    files = {c.path for c in version.COPIES} | {"VERSION", "CHANGELOG.md", "scripts/version.py"}
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert run(tmp_path, "set", "9.8.7-rc.1").returncode == 0
    for copy in version.COPIES:
        assert "9.8.7-rc.1" in (tmp_path / copy.path).read_text(), copy.path
    failed = run(tmp_path, "check")
    assert failed.returncode == 1
    assert "CHANGELOG.md: no '## [9.8.7-rc.1]' section" in failed.stderr

    changelog = tmp_path / "CHANGELOG.md"
    changelog.write_text(changelog.read_text() + "\n## [9.8.7-rc.1]\n")
    assert run(tmp_path, "check").returncode == 0
    pom = tmp_path / "clients/java/pom.xml"
    pom.write_text(
        pom.read_text().replace("<version>9.8.7-rc.1</version>", "<version>1.0</version>", 1)
    )
    failed = run(tmp_path, "check")
    assert failed.returncode == 1
    assert "clients/java/pom.xml: the Maven artifact version is 1.0" in failed.stderr
    assert run(tmp_path, "set", "banana").returncode != 0
