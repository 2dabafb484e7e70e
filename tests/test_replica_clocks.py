"""Replicas whose clocks disagree (NTP not yet synced on a new host, a VM resumed, a
container on a host whose clock drifted). Each replica decides with its own clock; what
they share through the database must not be undone by the one that is behind. Run with
KEYTURN_TEST_BACKEND=postgres."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyturn.v1 import admin_pb2, handles_pb2
from keyturn_server.clock import ManualClock
from tests.harness import Harness

pytestmark = pytest.mark.postgres

START = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC)


@pytest.mark.parametrize("skew", [timedelta(seconds=90), timedelta(seconds=2)], ids=str)
async def test_the_per_handle_rate_limit_holds_across_replicas_whose_clocks_disagree(
    tmp_path: Path, skew: timedelta
) -> None:
    """A replica behind took the stored minute for a stale one and started counting
    again from zero, and the replica ahead then counted from what it left: with calls
    alternating between them, all 40 of 40 validations passed a limit of 10 a minute.
    Now the window never moves back: a replica behind counts into the newer minute."""
    at = START + timedelta(seconds=49)  # 12:00:59: the first replica's minute ends soon
    first = await Harness(tmp_path / "a", ManualClock(at)).start()
    second = Harness(tmp_path / "b", ManualClock(at + skew), store=first.settings.store)
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy(tmp_path / "a" / "admin.token", tmp_path / "b" / "admin.token")
    await second.start()
    try:
        await first.set_policies(rate_limit_per_handle=10)
        await second.set_policies(rate_limit_per_handle=10)  # the other hears of it by then
        issued = await first.admin.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session")
        )
        valid = 0
        for i in range(40):
            replica = (second, first)[i % 2]  # the one ahead first
            answer = await replica.admin.handles.ValidateHandle(
                handles_pb2.ValidateHandleRequest(token=issued.token)
            )
            valid += answer.validation.valid
        assert valid <= 10
    finally:
        await second.stop()
        await first.stop()


async def test_a_follower_whose_clock_runs_ahead_does_not_report_the_scheduler_behind(
    tmp_path: Path,
) -> None:
    """The leader acts on its own clock. A follower 90 s ahead of it took every deadline
    the leader had not reached yet for work left undone, and reported its scheduler
    NOT_SERVING, "no replica is keeping up", for a minute and a half after each (a load
    balancer drains it). A follower measures the lag at the database's clock when its
    own is ahead of it."""
    now = datetime.now(UTC).replace(microsecond=0)  # the database's clock is the real one
    first = await Harness(tmp_path / "a", ManualClock(now)).start()
    ahead = ManualClock(now + timedelta(seconds=90))
    second = Harness(tmp_path / "b", ahead, store=first.settings.store)
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy(tmp_path / "a" / "admin.token", tmp_path / "b" / "admin.token")
    await second.start()
    try:
        assert first.app is not None and first.app.leadership.lease() is not None
        await first.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="device"))
        ahead.advance(timedelta(minutes=5))  # the device handle's rotation, on its clock
        request = admin_pb2.GetHealthRequest(component="scheduler")
        health = await second.admin.admin.GetHealth(request)
        [scheduler] = health.health.components
        assert scheduler.status == admin_pb2.SERVING_STATUS_SERVING, scheduler
        assert scheduler.scheduler.lag.ToTimedelta() < timedelta(minutes=1)
    finally:
        await second.stop()
        await first.stop()
