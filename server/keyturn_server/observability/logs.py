"""JSON-lines logging with a category on every line: access, audit, error, security
(and app for everything else). Nothing secret is ever passed to a logger."""

from __future__ import annotations

import json
import logging
import sys
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
        return json.dumps(line, separators=(",", ":"))


def configure(level: str, stream: TextIO | None = None) -> None:
    """Route every keyturn logger to one JSON handler at ``level`` (LOG_LEVEL)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
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
