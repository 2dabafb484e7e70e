"""How long a silent process keeps its place: --scheduler-lease-ttl (a scheduler holder on
PostgreSQL; the takeover is in tests/chaos/test_leadership.py) and --worker-timeout (a
worker of --workers; the kill is in tests/test_workers.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from keyturn_server.settings import SettingsError
from tests.test_listeners import settings


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, timedelta(seconds=15)),
        (["--scheduler-lease-ttl", "30s"], {}, timedelta(seconds=30)),
        (["--scheduler-lease-ttl", "0"], {}, timedelta(0)),
        (["--scheduler-lease-ttl", "off"], {}, timedelta(0)),
        ([], {"KEYTURN_SCHEDULER_LEASE_TTL": "1m"}, timedelta(minutes=1)),
        (
            ["--scheduler-lease-ttl", "5s"],
            {"KEYTURN_SCHEDULER_LEASE_TTL": "1m"},
            timedelta(seconds=5),
        ),
    ],
)
def test_the_lease_ttl_comes_from_the_flag_then_the_environment(
    argv: list[str], env: dict[str, str], expected: timedelta
) -> None:
    assert settings(argv, env).scheduler_lease_ttl == expected


@pytest.mark.parametrize("text", ["1s", "2.5s", "soon"])
def test_a_lease_ttl_a_healthy_holder_could_outlive_is_refused(text: str) -> None:
    """The holder shows a sign of life once a second: below 3 s, followers could end a
    healthy holder's session."""
    with pytest.raises((SettingsError, SystemExit)):
        settings(["--scheduler-lease-ttl", text])
    with pytest.raises(SettingsError):
        settings([], {"KEYTURN_SCHEDULER_LEASE_TTL": text})


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, timedelta(seconds=30)),
        (["--worker-timeout", "10s"], {}, timedelta(seconds=10)),
        (["--worker-timeout", "off"], {}, timedelta(0)),
        ([], {"KEYTURN_WORKER_TIMEOUT": "2m"}, timedelta(minutes=2)),
        (["--worker-timeout", "5s"], {"KEYTURN_WORKER_TIMEOUT": "2m"}, timedelta(seconds=5)),
    ],
)
def test_the_worker_timeout_comes_from_the_flag_then_the_environment(
    argv: list[str], env: dict[str, str], expected: timedelta
) -> None:
    assert settings(argv, env).worker_timeout == expected


@pytest.mark.parametrize("text", ["1s", "never"])
def test_a_worker_timeout_shorter_than_its_heartbeat_is_refused(text: str) -> None:
    """Workers say they run once a second: below 3 s a busy one would be killed."""
    with pytest.raises((SettingsError, SystemExit)):
        settings(["--worker-timeout", text])
    with pytest.raises(SettingsError):
        settings([], {"KEYTURN_WORKER_TIMEOUT": text})
