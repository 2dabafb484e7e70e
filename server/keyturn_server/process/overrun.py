"""A stop that does not end says where it is stuck, then ends the process.

A server asked to stop lets its calls finish for the grace period, then flushes and
closes in milliseconds. A stop still going well past that is stuck, as one was while it
waited for a scheduler that had slept through its cancel (tests/test_stop.py): it would
wait for the SIGKILL of Kubernetes, systemd or the supervisor, which ends it without a
word about why. This watch runs in a thread of its own (an event loop that is itself
stuck cannot run a timer): it logs the stack of every asyncio task, asked of the loop if
it still turns, and of every thread, then exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import traceback

from keyturn_server.observability import logs

log = logging.getLogger("keyturn.app")
#: Seconds past the grace period before a stop counts as stuck: after the calls, a stop
#: takes milliseconds, or a few seconds with a PostgreSQL store that is slow to answer.
#: Grace plus this stays inside Kubernetes' default 30 s before its SIGKILL.
OVERRUN = 8.0
#: How long the loop is given to list its tasks.
ASK_LOOP = 1.0


class StopWatch:
    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self._loop = loop
        self._timer = threading.Timer(seconds, self._stuck)
        self._timer.name = "keyturn-stop-watch"
        self._timer.daemon = True
        self.seconds = seconds

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def _stuck(self) -> None:
        log.error(
            "keyturn did not stop within %.0f s; where it is stuck follows, then it exits",
            self.seconds,
            extra={
                "category": "error",
                "tasks": self._tasks(),
                "threads": _threads(),
            },
        )
        logs.stop()  # what is queued is written before the process ends
        os._exit(1)

    def _tasks(self) -> str:
        answered = threading.Event()
        found: list[str] = []

        def list_tasks() -> None:
            found.extend(f"{t.get_name()}: {' > '.join(_awaiting(t))}" for t in asyncio.all_tasks())
            answered.set()

        try:
            self._loop.call_soon_threadsafe(list_tasks)
        except RuntimeError:  # the loop is closed
            return "(the event loop is closed)"
        if not answered.wait(ASK_LOOP):
            return "(the event loop did not answer: it is blocked, see the threads)"
        return "\n".join(found)


def _threads() -> str:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return "\n".join(
        f"{names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}"
        for ident, frame in sys._current_frames().items()
    )


def _awaiting(task: asyncio.Task[object]) -> list[str]:
    """Where ``task`` waits, outermost first: its coroutine and each one it awaits (a
    suspended task's own stack holds only the outermost frame)."""
    where: list[str] = []
    awaited: object = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            code = frame.f_code
            where.append(f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return where
