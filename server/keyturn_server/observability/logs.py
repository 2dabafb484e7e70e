"""JSON-lines logging with a category on every line: access, audit, error, security
(and app for everything else). Nothing secret is ever passed to a logger.

Lines are written by a thread of their own, never by the event loop: the loop formats
each line and queues it. A log reader that stops reading (a stalled shipper, a full pipe,
a terminal on hold) used to block the loop in ``write`` once the pipe's 64 KiB were full,
and with it every call, health checks included. Lines that find the queue full
(``QUEUE_LIMIT``) are dropped and counted, and the writer says how many as soon as it can
write again: the audit trail of record is the store's audit log, not these lines.

What is dropped first is what matters least. Access and app lines may fill the queue only
up to ``BULK_SHARE`` of it: the rest is kept for security, audit and error lines, so a
flood of refused calls from one caller (one access line each) with a slow reader cannot
push out the authentication failures and anomalies that show the attack.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from keyturn_server.domain.audit import AuditEntry

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
CATEGORIES = ("access", "audit", "error", "security", "app")


def category_of(record: logging.LogRecord) -> str:
    """The record's category; a library's record has none: error from ERROR up, else app."""
    category = getattr(record, "category", None)
    if isinstance(category, str):
        return category
    return "error" if record.levelno >= logging.ERROR else "app"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "category": category_of(record),
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
        return json.dumps(line, separators=(",", ":"))


#: Records waiting for the writer thread, at most (a few MiB); past it they are dropped.
QUEUE_LIMIT = 10_000
#: The share of the queue that access and app lines may fill; the rest is kept for the
#: lines that must not be crowded out (PRIORITY).
BULK_SHARE = 0.8
PRIORITY = frozenset({"security", "audit", "error"})
#: How long stopping waits for room in a full queue to say it is done (at exit).
STOP_WAIT = 5.0
#: Under load, how long the writer lets records gather between two writes.
GATHER = 0.005
#: The largest write a pipe keeps whole (POSIX PIPE_BUF on Linux).
ATOMIC_WRITE = 4096


class _Enqueue(logging.Handler):
    """Formats each record where it is logged (JSON, as a line) and queues the line for
    the writer thread; counts the lines dropped, by category, when there is no room."""

    def __init__(self, lines: queue.Queue[str | None]) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines = lines
        self.bulk_limit = int(lines.maxsize * BULK_SHARE)
        #: Lines dropped so far, by category (only ever grows).
        self.dropped: dict[str, int] = {}
        self._count = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        category = category_of(record)
        if category not in PRIORITY and self.lines.qsize() >= self.bulk_limit:
            self._drop(category)
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self.lines.put_nowait(line)
        except queue.Full:
            self._drop(category)

    def _drop(self, category: str) -> None:
        with self._count:  # other threads log too (the PostgreSQL pool, workers)
            self.dropped[category] = self.dropped.get(category, 0) + 1


class _Writer:
    """The thread that writes the queued lines; first says how many were dropped since
    it last could write.

    Under load it wakes at most once per ``GATHER`` and writes every line queued meanwhile
    in one write: woken for each line (a queue's usual blocking get) and made to format
    it, the thread cost each logged call more than writing inline had, in thread switches
    and GIL hand-offs. Idle, it blocks and costs nothing."""

    def __init__(self, lines: queue.Queue[str | None], enqueue: _Enqueue, stream: TextIO) -> None:
        self._lines = lines
        self._enqueue = enqueue
        self._stream = stream
        self._reported: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="keyturn-log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread; bounded, so that a stream that is
        never read again cannot hold the process at its exit (the thread is a daemon)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._lines.put(None, timeout=STOP_WAIT)  # None: the end
        thread.join(STOP_WAIT)

    def _run(self) -> None:
        lines = self._lines
        while True:
            batch = [lines.get()]
            # At most a queue's worth: lines logged while it drains would otherwise join
            # the batch without end, and a stream that then stalls holds them all.
            with contextlib.suppress(queue.Empty):
                while batch[-1] is not None and len(batch) < lines.maxsize:
                    batch.append(lines.get_nowait())
            ended = batch[-1] is None
            self._write([line for line in batch if line is not None])
            if ended:
                return
            time.sleep(GATHER)

    def _write(self, lines: list[str]) -> None:
        dropped = dict(self._enqueue.dropped)
        if dropped != self._reported:
            lost = {c: n - self._reported.get(c, 0) for c, n in dropped.items()}
            lost = {c: n for c, n in lost.items() if n}
            self._reported = dropped
            total = sum(lost.values())
            notice = logging.LogRecord(
                "keyturn.logs",
                logging.WARNING,
                __file__,
                0,
                "%d log lines dropped: the log stream was not being read",
                (total,),
                None,
            )
            notice.category = "error"
            notice.dropped = total
            for category, count in sorted(lost.items()):
                setattr(notice, f"dropped_{category}", count)
            lines.insert(0, self._enqueue.format(notice))
        if not lines:
            return
        try:
            for chunk in chunks(lines):
                self._stream.write(chunk)
                self._stream.flush()
        except (OSError, ValueError):  # the stream is gone (closed, broken pipe)
            pass


def chunks(lines: list[str], limit: int = ATOMIC_WRITE) -> list[str]:
    """``lines`` joined into writes of at most ``limit`` bytes that end at line ends (a
    longer line is a write of its own). Workers share one stderr: a pipe keeps a write
    of up to PIPE_BUF bytes whole, so their lines interleave but never mix."""
    found: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        length = len(line.encode()) + 1
        if current and size + length > limit:
            found.append("".join(current))
            current, size = [], 0
        current.append(line + "\n")
        size += length
    if current:
        found.append("".join(current))
    return found


_writer: _Writer | None = None


def stop() -> None:
    """Write what is queued and end the writer (at exit, or before configuring again)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


def configure(level: str, stream: TextIO | None = None, queue_limit: int = QUEUE_LIMIT) -> None:
    """Route every keyturn logger to one JSON handler at ``level`` (LOG_LEVEL), written
    by a thread of its own (see the module docstring)."""
    global _writer
    stop()
    lines: queue.Queue[str | None] = queue.Queue(queue_limit)
    handler = _Enqueue(lines)
    _writer = _Writer(lines, handler, stream or sys.stderr)
    _writer.start()
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
    # Every other library (aiohttp, asyncio, grpc) logs through the same handler from
    # WARNING up. Without it Python's last-resort handler wrote their lines to stderr as
    # plain text, on the event loop, past the queue: a stalled reader could block the
    # loop again, and a JSON log shipper got tracebacks it could not parse.
    base = logging.getLogger()
    for old in list(base.handlers):
        base.removeHandler(old)
    base.addHandler(handler)
    base.setLevel(logging.WARNING)


def parse_level(level: str) -> int:
    value = logging.getLevelName(level.strip().upper() or "INFO")
    if not isinstance(value, int):
        raise ValueError(f"LOG_LEVEL {level!r} is not one of debug, info, warning, error")
    return value


access = logging.getLogger("keyturn.access")
audit = logging.getLogger("keyturn.audit")
security = logging.getLogger("keyturn.security")


atexit.register(stop)  # once: the writer in place at exit writes what is queued


def audit_line(entry: AuditEntry) -> None:
    """The audit log stream: each entry as it is committed, with its place in the chain."""
    d = entry.draft
    audit.info(
        d.action,
        extra={
            "category": "audit",
            "sequence": entry.sequence,
            "principal": d.principal,
            "user_id": d.user_id,
            "resource": f"{d.resource_type}/{d.resource_id}",
            "outcome": d.outcome,
            "reason": d.reason,
            "peer": d.peer,
            # The chain's head as it grows: a witness outside the database, against which
            # VerifyAuditLog's head can be compared (a keyed hash, not a secret).
            "hash": entry.hash.hex(),
        },
    )
