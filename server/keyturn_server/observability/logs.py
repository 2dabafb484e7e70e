"""JSON-lines logging with a category on every line: access, audit, error, security
(and app for everything else). Nothing secret is ever passed to a logger.

Lines are formatted and written by a thread of their own, never by the event loop: the
loop only queues each record. A log reader that stops reading (a stalled shipper, a full
pipe, a terminal on hold) used to block the loop in ``write`` once the pipe's 64 KiB were
full, and with it every call, health checks included; and formatting and writing a line
cost each call that logs one some 15-20 µs. Records that find the queue full
(``QUEUE_LIMIT``) are dropped and counted, and the writer says how many as soon as it can
write again: the audit trail of record is the store's audit log, not these lines.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import logging.handlers
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
CATEGORIES = ("access", "audit", "error", "security", "app")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "category": getattr(record, "category", "app"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "category":
                line[key] = (
                    value if isinstance(value, str | int | float | bool | None) else str(value)
                )
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
            line["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted before the record was queued
            line["traceback"] = record.exc_text
        return json.dumps(line, separators=(",", ":"))


#: Records waiting for the writer thread, at most (a few MiB); past it they are dropped.
QUEUE_LIMIT = 10_000
#: How long stopping waits for room in a full queue to say it is done (at exit).
STOP_WAIT = 5.0


class _Enqueue(logging.handlers.QueueHandler):
    """Queues records for the writer thread; counts those dropped on a full queue."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(records)
        self.dropped = 0
        self._lock = threading.Lock()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """What cannot wait for the writer: the message with its arguments, and the
        exception (its traceback holds frames that must not outlive the call). The JSON
        is made by the writer."""
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.error = record.exc_info[0].__name__
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:  # other threads log too (the PostgreSQL pool, workers)
                self.dropped += 1


class _Writer(logging.handlers.QueueListener):
    """Writes queued records; first says how many were dropped since it last could."""

    def __init__(
        self,
        records: queue.Queue[logging.LogRecord | None],
        enqueue: _Enqueue,
        handler: logging.Handler,
    ) -> None:
        super().__init__(records, handler)
        self._records = records
        self._enqueue = enqueue
        self._reported = 0

    def stop(self) -> None:
        """Write what is queued, then end the thread. Bounded, unlike the base class's: a
        stream that is never read again must not hold the process at its exit (the
        thread is a daemon), and a full queue must not fail it."""
        thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._records.put(getattr(self, "_sentinel", None), timeout=STOP_WAIT)
        thread.join(STOP_WAIT)
        self._thread = None

    def handle(self, record: logging.LogRecord) -> None:
        dropped = self._enqueue.dropped
        if dropped != self._reported:
            lost, self._reported = dropped - self._reported, dropped
            notice = logging.LogRecord(
                "keyturn.logs",
                logging.WARNING,
                __file__,
                0,
                "%d log lines dropped: the log stream was not being read",
                (lost,),
                None,
            )
            notice.category = "error"
            notice.dropped = lost
            super().handle(notice)
        super().handle(record)


_writer: _Writer | None = None


def _stop_writer() -> None:
    """Write what is queued (at exit, or before configuring again)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


def configure(level: str, stream: TextIO | None = None, queue_limit: int = QUEUE_LIMIT) -> None:
    """Route every keyturn logger to one JSON handler at ``level`` (LOG_LEVEL), written
    by a thread of its own (see the module docstring)."""
    global _writer
    _stop_writer()
    output = logging.StreamHandler(stream or sys.stderr)
    output.setFormatter(JsonFormatter())
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(queue_limit)
    handler = _Enqueue(records)
    _writer = _Writer(records, handler, output)
    _writer.start()
    atexit.register(_stop_writer)
    root = logging.getLogger("keyturn")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(parse_level(level))
    root.propagate = False
    # The PostgreSQL pool says "discarding broken connection" for each one a database
    # restart breaks; the store reports the outage itself, once. Only its errors show.
    pool = logging.getLogger("psycopg")
    for old in list(pool.handlers):
        pool.removeHandler(old)
    pool.addHandler(handler)
    pool.setLevel(logging.ERROR)
    pool.propagate = False


def parse_level(level: str) -> int:
    value = logging.getLevelName(level.strip().upper() or "INFO")
    if not isinstance(value, int):
        raise ValueError(f"LOG_LEVEL {level!r} is not one of debug, info, warning, error")
    return value


access = logging.getLogger("keyturn.access")
audit = logging.getLogger("keyturn.audit")
security = logging.getLogger("keyturn.security")
