"""Property-based fuzzing of the HTTP listener from its own OpenAPI document
(schemathesis): valid and invalid requests to every non-streaming operation, /v1 and the
specification's routes, against a real server with authentication on. No answer may be a
server error: a client's mistake is a 4xx, whatever it sends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from keyturn_server.api.http import openapi
from tests.harness import MASTER_KEY, SECRETS
from tests.process import free_port

pytestmark = pytest.mark.slow

SCHEMA = schemathesis.openapi.from_path(str(Path(openapi.__file__).with_name(openapi.FILE)))
# Streams never end by themselves; test_http_sse.py covers them.
SCHEMA = SCHEMA.exclude(path_regex="watchExpiring")
SCHEMA.config.generation.update(
    modes=list(schemathesis.GenerationMode),
    max_examples=20,
    database="none",
    # The token is ours (below); unauthenticated calls are tested route by route elsewhere.
    with_security_parameters=False,
)
#: What the fuzz sent and got, across the operations (reported in "figures").
TRIED: Counter[str] = Counter()
SERVER_ERRORS: list[str] = []


class Live:
    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    http_port = free_port()
    log = data.parent / "server.log"
    command = [
        sys.executable,
        "-m",
        "keyturn_server",
        "serve",
        "--data-dir",
        str(data),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--caller-rate-limit",
        "0",
    ]
    env = {**os.environ, "MASTER_KEY": MASTER_KEY, "LOG_LEVEL": "warning"}
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            try:
                if requests.get(base + "/openapi.json", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        token = (data / "admin.token").read_text().strip()
        SECRETS.add(token)
        yield Live(base, token)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    assert '"level":"error"' not in log.read_text()


@SCHEMA.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_is_a_server_error(case: Any, live: Live) -> None:
    response = case.call(base_url=live.base, headers=live.headers, timeout=30)
    TRIED[f"{response.status_code // 100}xx"] += 1
    if response.status_code >= 500:
        SERVER_ERRORS.append(f"{case.method} {case.formatted_path}: {response.text[:300]}")
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"
    if response.headers.get("Content-Type", "").startswith("application/json"):
        response.json()  # every JSON answer parses


def test_fuzz_figures(record_property: Any) -> None:
    """Runs after the fuzz (same file, same worker): what it tried, for the summary."""
    total = sum(TRIED.values())
    if total:
        spread = ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items()))
        record_property(
            "figures",
            f"http fuzz: {total} requests from openapi.json ({spread}), "
            f"{len(SERVER_ERRORS)} server errors",
        )
    assert SERVER_ERRORS == []
