from __future__ import annotations

import faulthandler
import io
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from keyturn_server.clock import ManualClock
from keyturn_server.observability.logs import JsonFormatter
from tests.harness import BACKEND, SECRETS, Harness

#: Per-test timeout of the suites marked slow (the longest, the soak, takes about two
#: minutes; three under a loaded CPU); the others have pyproject's default.
SLOW_TIMEOUT = 420


#: The terminal's stderr, kept before output capture replaces it (as pytest's faulthandler
#: plugin keeps it): where a hung test's stacks go.
_stderr: TextIO | None = None


def pytest_configure(config: pytest.Config) -> None:
    """A hang names itself. A test past its timeout ends its xdist worker (pyproject's
    timeout_method = thread: a test stuck in C code or in its teardown cannot ignore it,
    as it could SIGALRM), and the stacks of every thread are printed a few seconds
    before; a run stopped from outside (the stage bound in scripts/test.sh sends
    SIGTERM) prints them too. Without this, CI only says it ran out of time."""
    global _stderr
    _stderr = os.fdopen(os.dup(sys.stderr.fileno()), "w")
    faulthandler.register(signal.SIGTERM, file=_stderr, all_threads=True, chain=True)


def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    if _stderr is not None and settings.timeout and settings.timeout > 5:
        faulthandler.dump_traceback_later(settings.timeout - 3, file=_stderr)


def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    faulthandler.cancel_dump_traceback_later()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under KEYTURN_TEST_BACKEND=postgres, tests that read the SQLite file are skipped, and
    PostgreSQL-only tests run only there (and need KEYTURN_TEST_POSTGRES_URL)."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
        if BACKEND == "postgres" and item.get_closest_marker("sqlite_only"):
            item.add_marker(pytest.mark.skip(reason="reads the SQLite file"))
        if BACKEND != "postgres" and item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.skip(reason="run with KEYTURN_TEST_BACKEND=postgres"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures the long suites measured (cycles survived, requests tried, ...), shown
    at the end of every run, also under xdist (they travel as user properties)."""
    lines = [
        str(value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", "") == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "figures"
    ]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def logs_hold_no_secrets() -> Iterator[io.StringIO]:
    """Every test runs with every Keyturn log line captured at DEBUG; none may contain a
    secret the test was handed (tokens, key material, the master key)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("keyturn")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    text = buffer.getvalue()
    leaked = [s[:12] + "..." for s in SECRETS if s and s in text]
    assert not leaked, f"secrets appeared in the logs: {leaked}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Harness]:
    """A real server with a fixed master key, a temp data dir and a fake clock."""
    harness = Harness(tmp_path / "data", clock)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()
