"""--scheduler-lease-ttl: how long a silent scheduler holder keeps the lease on PostgreSQL
(the takeover itself is in tests/chaos/test_leadership.py)."""

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
