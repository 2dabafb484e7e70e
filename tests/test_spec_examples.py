"""The specification's own KeyManager examples (JavaScript with axios, Python with
requests), extracted from the specification when the test runs (never copied here), run
unchanged against a live server's /api/key-management, every step checked.

The specification lives beside the repository (``../shared/seed/...``), or beside the
checkout a local clone was made from (``git clone . /tmp/x`` in CI's own check); KEYTURN_SPEC
names another place. Where it or Node is missing the tests are skipped, and under
KEYTURN_REQUIRE_ALL (CI) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
SPEC_NAME = "key-management-and-handle-rotation.md"
REQUIRE_ALL = bool(os.environ.get("KEYTURN_REQUIRE_ALL"))
#: The examples' default base URL, which the harness points at the live server instead
#: (the one setting a user of the examples would change).
DEFAULT_BASE = "http://localhost:3000"
AXIOS = "axios@^1"


def spec_path() -> Path | None:
    """KEYTURN_SPEC, else shared/seed/<spec> beside the repository or one of its parents
    (a worktree sits a level deeper than the main checkout), else beside the local
    checkout this one was cloned from."""
    given = os.environ.get("KEYTURN_SPEC")
    if given:
        return Path(given)
    for checkout in (ROOT, _origin()):
        for parent in checkout.parents if checkout else ():
            candidate = parent / "shared" / "seed" / SPEC_NAME
            if candidate.exists():
                return candidate
    return None


def _origin() -> Path | None:
    """The checkout ``origin`` names, when it is a directory on this machine."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    path = Path(found.removeprefix("file://")) if found else None
    return path.resolve() if path is not None and path.is_dir() else None


def missing(what: str) -> None:
    if REQUIRE_ALL:
        pytest.fail(f"{what} (KEYTURN_REQUIRE_ALL is set)")
    pytest.skip(what)


def example(language: str) -> str:
    """The ```language block of the specification that defines class KeyManager."""
    path = spec_path()
    if path is None or not path.exists():
        missing(f"the specification {SPEC_NAME} is not beside the repository")
    assert path is not None
    blocks = re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.DOTALL)
    found = [block for block in blocks if "class KeyManager" in block]
    assert len(found) == 1, f"expected one {language} KeyManager example in {path}"
    return found[0]


class LiveServer:
    def __init__(self, base: str, data: Path) -> None:
        self.base = base
        self.data = data


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """`keyturn serve --insecure-no-auth` on loopback: the examples send no token."""
    server = ServerProcess(tmp_path_factory.mktemp("examples") / "data", "--insecure-no-auth")
    base = server.start_http()
    try:
        yield LiveServer(base, server.data_dir)
    finally:
        server.terminate()


def check_effects(live: LiveServer, printed: str) -> None:
    """What every step of the example must have done, read back through the API."""
    api = live.base + "/api/key-management"
    key_id = re.search(r"Generated key: (key_\w+)", printed)
    handle = re.search(r"Generated handle: (kt_workflow_\w+)", printed)
    assert key_id and handle, printed
    key = requests.get(f"{api}/keys/{key_id.group(1)}", timeout=10).json()["key"]
    assert key["type"] == "encryption" and key["createdFor"] == "user123"
    assert key["metadata"] == {"purpose": "data-encryption", "environment": "production"}
    read = requests.get(f"{api}/handles/{handle.group(1)}", timeout=10).json()["handle"]
    assert read["context"] == {
        "workflow": "data-processing",
        "session": "session123",
        "environment": "production",
    }
    assert read["usageCount"] == 1 and read["boundIp"] == "192.168.1.100"
    assert read["boundUserAgent"] == "MyApp/1.0"


@pytest.mark.slow
def test_the_python_example_runs_unchanged(live: LiveServer, tmp_path: Path) -> None:
    source = example("python")
    harness = tmp_path / "run_example.py"
    harness.write_text(
        "import sys\n"
        "namespace = {'__name__': 'specification_example'}\n"
        "exec(compile(open(sys.argv[1]).read(), 'specification', 'exec'), namespace)\n"
        "namespace['KeyManager'].__init__.__defaults__ = (sys.argv[2],)\n"
        "namespace['example']()\n"
    )
    code = tmp_path / "example.py"
    code.write_text(source)
    run = subprocess.run(
        [sys.executable, str(harness), str(code), live.base],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    printed = run.stdout
    assert run.returncode == 0, run.stderr
    assert "Error:" not in printed, printed
    for line in ("Generated key: key_", "Generated handle: kt_workflow_", "Handle valid: True",
                 "System health: {", "Key statistics: {", "Handle statistics: {"):  # fmt: skip
        assert line in printed, printed
    check_effects(live, printed)


@pytest.fixture(scope="module")
def axios(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with axios installed (npm), where the JavaScript example runs."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        missing("node and npm are needed for the JavaScript example")
    where = tmp_path_factory.mktemp("axios")
    (where / "package.json").write_text('{"private": true}\n')
    install = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", AXIOS],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    return where


@pytest.mark.slow
def test_the_javascript_example_runs_unchanged(live: LiveServer, axios: Path) -> None:
    source = example("javascript")
    # The example defines example() without calling it; the harness points the example's
    # KeyManager at the live server, records every answer, and calls it.
    harness = """
;(async () => {
  keyManager.baseUrl = process.env.KEYTURN_HTTP_URL;
  const answers = [];
  const seen = (config, status) => answers.push([config?.method, config?.url, status]);
  axios.interceptors.response.use(
    (response) => { seen(response.config, response.status); return response; },
    (error) => { seen(error.config, error.response?.status ?? 0); throw error; },
  );
  await example();
  console.log('ANSWERS ' + JSON.stringify(answers));
})();
"""
    script = axios / "example.js"
    script.write_text(source + harness)
    run = subprocess.run(
        ["node", str(script)],
        cwd=axios,
        env={**os.environ, "KEYTURN_HTTP_URL": live.base},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "Error:" not in run.stderr, run.stderr
    printed = run.stdout
    for line in ("Generated key: key_", "Generated handle: kt_workflow_", "Handle valid: true",
                 "System health:", "Key statistics:", "Handle statistics:"):  # fmt: skip
        assert line in printed, printed
    answers = json.loads(printed.split("ANSWERS ", 1)[1])
    paths = sorted(url.removeprefix(live.base) for _, url, _ in answers)
    assert paths == sorted(
        [
            "/api/key-management/keys/generate",
            "/api/key-management/handles/generate",
            "/api/key-management/handles/validate",
            "/api/key-management/health",
            "/api/key-management/keys/statistics",
            "/api/key-management/handles/statistics",
        ]
    )
    assert all(200 <= status < 300 for _, _, status in answers), answers
    check_effects(live, printed)


def test_the_examples_default_base_url_is_what_the_harness_replaces() -> None:
    """If the specification changed its default, the harness would point nowhere."""
    for language in ("javascript", "python"):
        assert DEFAULT_BASE in example(language)
