"""A stop that never ended: the production clock's sleep lost its cancellation.

``SystemClock.sleep_until`` slept in ``asyncio.wait_for(wake.wait(), ...)``. On Python
3.11, a task cancelled in the same loop iteration in which its ``wait_for`` completes gets
the result instead of the CancelledError. The scheduler sleeps there between deadlines
and is woken (``poke``) by every change that may move a deadline, by its own worker or,
under ``--workers``, by every sibling's commit; ``App.stop`` cancels it and waits. When a
wake-up met the cancel, the scheduler went back to sleep until its next deadline (up to
30 s idle, hours with real deadlines) and the server never stopped: SIGTERM hung until a
SIGKILL, which also skips the final flush of usage counts. Found by the write-path
benchmark: 8 processes on one database, one of them stuck in ``App.stop`` for 120 s in
two of about twenty runs. The tests' ManualClock sleeps differently, so only the
system clock had this fault.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from keyturn_server.clock import SystemClock
from tests.harness import Harness
from tests.process import ServerProcess

#: `keyturn serve` whose stop never ends, as the scheduler's did: run as the command's
#: prefix (python THIS python -m keyturn_server serve ...).
HANGING_SERVE = """
import asyncio, sys
from keyturn_server import cli
from keyturn_server.app import App
from keyturn_server.process import overrun

async def hang_in_stop(self, grace=None):
    await asyncio.Event().wait()

App.stop = hang_in_stop
overrun.OVERRUN = 1.0  # past the grace period (10 s)
sys.exit(cli.main(sys.argv[sys.argv.index("keyturn_server") + 1 :]))
"""


async def asleep(clock: SystemClock, wake: asyncio.Event) -> asyncio.Task[None]:
    """A task sleeping on ``clock`` for an hour, or until ``wake``."""
    sleeper = asyncio.create_task(clock.sleep_until(clock.now() + timedelta(hours=1), wake))
    for _ in range(3):  # into the sleep
        await asyncio.sleep(0)
    assert not sleeper.done()
    return sleeper


async def test_a_sleep_cancelled_as_it_is_woken_is_cancelled() -> None:
    clock, wake = SystemClock(), asyncio.Event()
    sleeper = await asleep(clock, wake)
    wake.set()
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.shield(sleeper), 5)
    assert sleeper.cancelled()


async def test_a_sleep_still_ends_when_woken_or_due() -> None:
    clock, wake = SystemClock(), asyncio.Event()
    sleeper = await asleep(clock, wake)
    wake.set()
    await asyncio.wait_for(sleeper, 5)
    due = clock.now() + timedelta(milliseconds=20)
    await asyncio.wait_for(clock.sleep_until(due, asyncio.Event()), 5)
    assert clock.now() >= due


async def test_a_scheduler_stopped_as_it_is_woken_stops(tmp_path: Path) -> None:
    server = await Harness(tmp_path / "data", SystemClock()).start()
    try:
        assert server.app is not None and server.app.services is not None
        scheduler = server.app.services.scheduler
        for _ in range(20):  # let it settle and go to sleep until its next deadline
            await asyncio.sleep(0.01)
        assert scheduler.running
        scheduler.poke()  # a change, as SIGTERM arrives
        stopping = asyncio.create_task(scheduler.stop())
        # Not wait_for: Scheduler.stop suppresses the CancelledError that its timeout
        # would deliver, and would seem to have returned in time.
        done, _ = await asyncio.wait({stopping}, timeout=5)
        assert done, "the scheduler went back to sleep instead of stopping"
        assert not scheduler.running
    finally:
        await server.stop()


@pytest.mark.slow
async def test_a_stop_that_hangs_says_where_it_is_stuck_and_exits(tmp_path: Path) -> None:
    """Any other hang of the kind ends too, and names itself: without the watch, the
    process waited for a SIGKILL that ended it without a word."""
    wrapper = tmp_path / "hanging_serve.py"
    wrapper.write_text(HANGING_SERVE)
    server = ServerProcess(tmp_path / "data", "--http-listen", "off")
    server.prefix = [sys.executable, str(wrapper)]
    await server.start()
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(server.process.wait, 40)
    finally:
        server.kill()  # if it is still running: the test has failed
    assert code == 1
    said = [json.loads(line) for line in server.log.read_text().splitlines() if line]
    stuck = [line for line in said if line["msg"].startswith("keyturn did not stop")]
    assert stuck, said[-5:]
    assert "hang_in_stop" in stuck[0]["tasks"]
    assert "MainThread" in stuck[0]["threads"]
