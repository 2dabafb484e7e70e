"""The host's clock stepped back: by NTP correcting a bad source, an operator's `date -s`, a
virtual machine resumed from a snapshot, a host booted with its hardware clock behind.

Expiry, rate windows, rotation and the audit log's times all compare the system clock
with stored times. Stepped back an hour, every live handle and key version had an hour
more to live (a handle past its maximum lifetime validated again), the scheduler's
deadlines moved an hour later, and audit entries were written an hour before the ones
already there. Now the server's time never runs backward: it keeps running at the pace
of the monotonic clock until the system clock catches up, and a server started with its
clock behind the store's latest time starts from that time."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keyturn.v1 import admin_pb2, handles_pb2, keys_pb2
from keyturn_server.app import App
from keyturn_server.clock import ManualClock, SystemClock
from keyturn_server.domain.events import EventKind
from keyturn_server.settings import Settings
from tests.harness import Harness
from tests.test_listeners import settings

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Host:
    """The host's two clocks: the wall clock, which NTP or an operator can step, and the
    steady clock (CLOCK_BOOTTIME), which nothing steps and which counts a suspend."""

    def __init__(self, start: datetime = START) -> None:
        self.wall = start.timestamp()
        self.monotonic = 5_000.0

    def clock(self) -> SystemClock:
        """The clock a server process on this host reads (a new one per process)."""
        return SystemClock(wall=lambda: self.wall, monotonic=lambda: self.monotonic)

    def advance(self, delta: timedelta) -> None:
        """Time passes."""
        self.wall += delta.total_seconds()
        self.monotonic += delta.total_seconds()

    def step(self, delta: timedelta) -> None:
        """The wall clock is set, and only it moves."""
        self.wall += delta.total_seconds()

    def suspend(self, delta: timedelta) -> None:
        """The host sleeps: both clocks move on, but the event loop's timers (which follow
        CLOCK_MONOTONIC, which a suspend stops) do not."""
        self.advance(delta)


async def validate(server: Harness, token: str) -> handles_pb2.Validation:
    answer = await server.admin.handles.ValidateHandle(
        handles_pb2.ValidateHandleRequest(token=token)
    )
    return answer.validation


def life_left(made: handles_pb2.GenerateHandleResponse, host: Host) -> timedelta:
    return made.handle.expire_time.ToDatetime(UTC) - datetime.fromtimestamp(host.wall, UTC)


async def a_minute_before_the_end(
    server: Harness, host: Host
) -> handles_pb2.GenerateHandleResponse:
    """A session handle, used once a minute before its maximum lifetime ends."""
    made = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    host.advance(life_left(made, host) - timedelta(minutes=1))
    assert (await validate(server, made.token)).valid
    return made


async def audit_times(server: Harness) -> list[datetime]:
    listed = await server.admin.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(page_size=1000)
    )
    entries = sorted(listed.events, key=lambda e: e.sequence)
    return [e.time.ToDatetime(UTC) for e in entries]


async def test_a_clock_stepped_back_gives_no_handle_back_the_time_it_lived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = Host()
    server = await Harness(tmp_path / "data", host.clock()).start()
    try:
        made = await a_minute_before_the_end(server, host)
        with caplog.at_level(logging.WARNING, logger="keyturn.clock"):
            host.step(-timedelta(hours=1))
            host.advance(timedelta(minutes=2))  # its maximum lifetime has passed
            late = await validate(server, made.token)
        assert not late.valid
        assert handles_pb2.ValidationReason.Name(late.reason) == "VALIDATION_REASON_EXPIRED"
        stepped = [r for r in caplog.records if r.name == "keyturn.clock"]
        assert stepped and "back" in stepped[0].getMessage()
        # What is written while the clock is behind is written at the server's time.
        await server.admin.handles.GenerateHandle(handles_pb2.GenerateHandleRequest(type="api"))
        times = await audit_times(server)
        assert times == sorted(times)
    finally:
        await server.stop()


async def test_a_server_started_with_its_clock_behind_starts_from_the_stores_time(
    tmp_path: Path,
) -> None:
    host = Host()
    server = await Harness(tmp_path / "data", host.clock()).start()
    try:
        made = await a_minute_before_the_end(server, host)
        await server.stop()
        host.step(-timedelta(hours=1))  # the host comes back with its clock an hour behind
        server.clock = host.clock()  # a new process
        await server.start()
        host.advance(timedelta(minutes=2))
        assert not (await validate(server, made.token)).valid
    finally:
        await server.stop()


async def test_a_server_started_long_after_the_stores_time_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart cannot tell a long stop from a clock that is wrong; what fell due is
    acted on at once, so the log says how far past the store's time the start is."""
    host = Host()
    server = await Harness(tmp_path / "data", host.clock()).start()
    try:
        for stopped, said in ((timedelta(minutes=5), False), (timedelta(days=40), True)):
            await server.stop()
            host.advance(stopped)
            server.clock = host.clock()  # a new process
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="keyturn.clock"):
                await server.start()
            lines = [r.getMessage() for r in caplog.records]
            assert any("past the latest time this store recorded" in m for m in lines) == said
            if said:
                assert any("40 days" in m for m in lines), lines
    finally:
        await server.stop()


@pytest.mark.sqlite_only
async def test_a_forged_time_in_the_store_does_not_move_the_server_ahead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Set far ahead, the floor would expire every handle and destroy every removed key:
    it is authenticated like the audit log's anchor, and a forged one is ignored."""
    host = Host()
    server = await Harness(tmp_path / "data", host.clock()).start()
    made = await server.admin.handles.GenerateHandle(
        handles_pb2.GenerateHandleRequest(type="session")
    )
    await server.stop()
    year_2100 = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    with sqlite3.connect(tmp_path / "data" / "keyturn.db") as db:
        db.execute(
            "UPDATE meta SET value = ? WHERE name = 'clock_floor'",
            (f"{year_2100}:{'00' * 32}".encode(),),
        )
        assert db.total_changes == 1
    server.clock = host.clock()
    try:
        with caplog.at_level(logging.ERROR):
            await server.start()
        assert (await validate(server, made.token)).valid
        assert any("failed authentication" in r.getMessage() for r in caplog.records)
    finally:
        await server.stop()


async def test_a_clock_stepped_forward_is_followed_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A step forward within --max-clock-step cannot be told from the correction of a
    clock that was behind, and only ends things early: it is followed, and logged."""
    host = Host()
    server = await Harness(tmp_path / "data", host.clock()).start()
    try:
        made = await a_minute_before_the_end(server, host)
        with caplog.at_level(logging.WARNING, logger="keyturn.clock"):
            host.step(timedelta(minutes=10))
            assert not (await validate(server, made.token)).valid
        assert any("forward" in r.getMessage() for r in caplog.records)
    finally:
        await server.stop()


async def test_a_far_step_forward_is_held_until_the_operator_says_the_clock_is_right(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The system clock jumps a year ahead (a wrong NTP source, a bad hardware clock).
    Followed, every key version past its lifetime had its material destroyed and every
    handle expired, for good: the store's time floor kept the server in that year after
    the clock was put right. Held, nothing ends; SIGHUP follows a clock that was right."""
    host = Host()
    server = await Harness(tmp_path / "data", host.clock()).start()
    try:
        made = await server.admin.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session")
        )
        key = (
            await server.admin.keys.GenerateKey(keys_pb2.GenerateKeyRequest(type="encryption"))
        ).key
        sealed = await server.admin.keys.Encrypt(
            keys_pb2.EncryptRequest(key_id=key.id, plaintext=b"payroll")
        )
        with caplog.at_level(logging.ERROR, logger="keyturn.clock"):
            host.step(timedelta(days=365))
            assert (await validate(server, made.token)).valid
        assert any("more than the 1000 s" in r.getMessage() for r in caplog.records)
        await asyncio.sleep(1.5)  # the scheduler's sleep reads the clock every second
        await server.settle()
        assert not await expired(server, made.handle.id)
        opened = await server.admin.keys.Decrypt(
            keys_pb2.DecryptRequest(key_id=key.id, ciphertext=sealed.ciphertext)
        )
        assert opened.plaintext == b"payroll"

        assert server.app is not None
        server.app.reload()  # SIGHUP: the clock is right (the host was paused a year)
        assert not (await validate(server, made.token)).valid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not await expired(server, made.handle.id):
            assert loop.time() < deadline, "the followed step's due expiry was not acted on"
            await asyncio.sleep(0.1)
    finally:
        await server.stop()


async def test_a_far_step_forward_that_is_put_right_ends_nothing(tmp_path: Path) -> None:
    host = Host()
    server = await Harness(tmp_path / "data", host.clock()).start()
    try:
        made = await server.admin.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session")
        )
        host.step(timedelta(days=3650))
        host.advance(timedelta(minutes=5))
        assert (await validate(server, made.token)).valid
        host.step(-timedelta(days=3650))  # NTP puts it right
        host.advance(timedelta(minutes=5))
        assert (await validate(server, made.token)).valid
        assert server.app is not None
        assert close(server.app.clock.now(), datetime.fromtimestamp(host.wall, UTC))
        assert not await expired(server, made.handle.id)
    finally:
        await server.stop()


async def test_a_scheduler_asleep_acts_on_what_a_suspend_made_due(tmp_path: Path) -> None:
    """The host was suspended (the monotonic clock, which the event loop's timers
    follow, stood still; the wall clock did not). The scheduler slept for the monotonic
    time its next deadline had been away, so what the suspend made due waited that much
    longer: no EXPIRED event, no status change, for hours."""
    host = Host()
    server = await Harness(tmp_path / "data", host.clock()).start()
    try:
        made = await server.admin.handles.GenerateHandle(
            handles_pb2.GenerateHandleRequest(type="session")
        )
        await asyncio.sleep(0.2)  # the scheduler is asleep until the handle's first deadline
        host.suspend(life_left(made, host) + timedelta(minutes=1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not await expired(server, made.handle.id):
            assert loop.time() < deadline, "the suspend's due expiry was not acted on"
            await asyncio.sleep(0.1)
    finally:
        await server.stop()


async def expired(server: Harness, handle_id: str) -> bool:
    return any(
        e.kind is EventKind.EXPIRED and e.subject_id == handle_id for e in await server.events()
    )


# --- the clock alone ---------------------------------------------------------------


async def test_a_sleep_ends_soon_after_the_wall_clock_passes_its_deadline() -> None:
    host = Host()
    clock = host.clock()
    sleeper = asyncio.create_task(
        clock.sleep_until(clock.now() + timedelta(hours=1), asyncio.Event())
    )
    await asyncio.sleep(0.05)
    assert not sleeper.done()
    host.suspend(timedelta(minutes=59))  # not yet due: sleeps on
    await asyncio.sleep(1.5)
    assert not sleeper.done()
    host.suspend(timedelta(minutes=2))
    await asyncio.wait_for(sleeper, 5)


def close(a: datetime, b: datetime) -> bool:
    """Equal but for float rounding (the clocks are read as float seconds)."""
    return abs(a - b) < timedelta(microseconds=10)


def test_time_never_runs_backward_and_runs_on_at_the_monotonic_pace() -> None:
    host = Host()
    clock = host.clock()
    first = clock.now()
    host.step(-timedelta(milliseconds=300))  # a small step back: held, not followed
    assert clock.now() == first
    host.advance(timedelta(seconds=1))
    assert close(clock.now(), first + timedelta(milliseconds=700))
    before = clock.now()
    host.step(-timedelta(hours=2))
    assert close(clock.now(), before)
    host.advance(timedelta(minutes=10))
    assert close(clock.now(), before + timedelta(minutes=10))
    host.step(timedelta(hours=2))  # the clock is put right: followed again
    host.advance(timedelta(seconds=5))
    assert close(clock.now(), datetime.fromtimestamp(host.wall, UTC))
    host.step(-timedelta(hours=1))  # and a second step back is caught as the first was
    assert close(clock.now(), datetime.fromtimestamp(host.wall, UTC) + timedelta(hours=1))


def test_a_clock_started_behind_its_floor_runs_from_the_floor() -> None:
    host = Host()
    clock = host.clock()
    floor = clock.now() + timedelta(days=3)
    clock.not_before(floor)
    assert close(clock.now(), floor)
    host.advance(timedelta(seconds=30))
    assert close(clock.now(), floor + timedelta(seconds=30))
    later = host.clock()
    later.not_before(clock.now() - timedelta(days=10))  # a floor behind the clock: no effect
    assert close(later.now(), datetime.fromtimestamp(host.wall, UTC))


def test_a_step_forward_past_the_limit_is_held_and_followed_when_told() -> None:
    host = Host()
    clock = host.clock()
    start = clock.now()
    host.step(timedelta(seconds=900))  # within 1000 s: followed
    assert close(clock.now(), start + timedelta(seconds=900)) and not clock.ahead
    held = clock.now()
    host.step(timedelta(days=30))
    assert close(clock.now(), held) and clock.ahead
    host.advance(timedelta(seconds=10))  # runs on at the steady pace
    assert close(clock.now(), held + timedelta(seconds=10))
    assert clock.follow_system_clock() > timedelta(days=29).total_seconds()
    assert close(clock.now(), datetime.fromtimestamp(host.wall, UTC)) and not clock.ahead
    assert clock.follow_system_clock() == 0.0  # nothing held: nothing to follow
    anything = SystemClock(wall=lambda: host.wall, monotonic=lambda: host.monotonic, max_step=None)
    host.step(timedelta(days=300))
    assert close(anything.now(), datetime.fromtimestamp(host.wall, UTC))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], 1000.0), (["--max-clock-step", "1h"], 3600.0), (["--max-clock-step", "off"], None)],
)
def test_the_clock_step_limit_comes_from_its_flag(argv: list[str], expected: float | None) -> None:
    step = settings(argv).max_clock_step
    assert (step.total_seconds() if step else None) == expected


@pytest.mark.parametrize("step", [timedelta(hours=1), None])
def test_a_server_reads_its_clock_with_the_step_limit_it_was_given(
    step: timedelta | None,
) -> None:
    clock = App(Settings(max_clock_step=step)).clock
    assert isinstance(clock, SystemClock)
    assert clock.max_step == (step.total_seconds() if step else None)


def test_the_system_clock_reads_the_real_time() -> None:
    clock = SystemClock()
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(seconds=1)


@pytest.mark.postgres
async def test_a_replica_whose_clock_runs_ahead_does_not_move_the_others(
    tmp_path: Path,
) -> None:
    """A second process with a clock two hours ahead (a replica on a misconfigured host)
    raising the shared floor would move every replica that restarts after it two hours
    ahead: their handles expiring early, removed keys destroyed early. Only the replica
    that leads the scheduler raises it."""
    leader_clock = ManualClock(START)
    leader = await Harness(tmp_path / "a", leader_clock).start()
    ahead = Harness(
        tmp_path / "b", ManualClock(START + timedelta(hours=2)), store=leader.settings.store
    )
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy(tmp_path / "a" / "admin.token", tmp_path / "b" / "admin.token")
    await ahead.start()
    try:
        assert leader.app is not None and ahead.app is not None
        assert leader.app.leadership.lease() is not None
        assert ahead.app.leadership.lease() is None
        await leader.app.save_time_floor()
        await ahead.app.save_time_floor()
        floor = await leader.app.store.report(lambda repo: repo.clock_floor())
        assert floor == START
        await leader.stop()
        leader.clock = ManualClock(START + timedelta(seconds=5))  # restarted, its clock right
        await leader.start()
        assert leader.clock.now() == START + timedelta(seconds=5)
    finally:
        await ahead.stop()
        await leader.stop()
