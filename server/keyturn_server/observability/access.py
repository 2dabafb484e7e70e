"""The access log: one line per call that matters on its own, summaries for the rest.

At INFO (the production default) a line per call cost 52-60 µs of the event loop (a
LogRecord, the JSON formatter, a write to stderr), about a fifth of a validation's
server time. So calls are split:

- **One line each**: every call that did not end OK (denied, invalid, failed, cancelled),
  every refusal a servicer reports as data (a ValidateHandle answered ``valid=false``),
  every call that changes something or hands out secrets (generate, rotate, remove,
  restore, export, configuration, access tokens), audit reads, and streams.
- **Summarised**: successful calls of the hot read and use-in-place methods (ValidateHandle
  that validated, Encrypt, Decrypt, Sign, Verify, MACs, Get*, List*, statistics, health)
  are counted per (method, principal, peer, transport) and written as one ``rpc summary`` line per
  key every ``interval`` seconds, with the count and the mean and max latency.

- **Summarised when they fail alike**: calls that end UNAVAILABLE, RESOURCE_EXHAUSTED,
  DEADLINE_EXCEEDED or CANCELLED, whatever the method, per (method, code, principal,
  peer, transport). These say the server could not (a full disk, a stalled store, a
  caller over its rate) or the caller gave up, not what was asked; one line each was a
  flood exactly when the on-call reads the log: hundreds of lines a second through a
  full-disk outage, beside the store's one line saying so. A caller over its rate limit
  shows as one line per window with its count.

At DEBUG every call gets its own line, as before. Security events (anomalies, audit
entries, authentication failures) have their own categories and are never summarised.
Counting a call costs a dictionary update, about 1 µs.
"""

from __future__ import annotations

import contextvars
import logging
import time
from dataclasses import dataclass

from keyturn_server.observability.logs import access as access_logger

INTERVAL = 10.0
#: Distinct (method, principal, peer) keys held before the window is written early, so
#: that many callers cannot grow memory without bound.
MAX_KEYS = 10_000

#: Successful calls of these methods are summarised; any other call gets a line.
SUMMARISED = frozenset(
    f"/keyturn.v1.{service}/{method}"
    for service, methods in {
        "HandleService": (
            "ValidateHandle",
            "GetHandle",
            "ListHandles",
            "GetHandleStatistics",
        ),
        "KeyService": (
            "Encrypt",
            "Decrypt",
            "Sign",
            "Verify",
            "ComputeMac",
            "VerifyMac",
            "GetKey",
            "GetPublicKey",
            "ListKeys",
            "GetKeyStatistics",
        ),
        "AdminService": ("GetHealth", "GetConfig"),
    }.items()
    for method in methods
)

#: Failures summarised like successes (see the module docstring).
SUMMARISED_FAILURES = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"}
)

#: Set by a servicer when a call ends OK but refused what it was asked (the reason),
#: so that it is logged on its own line. Each call runs in its own task (context).
_refusal: contextvars.ContextVar[str] = contextvars.ContextVar("keyturn_refusal", default="")


def refused(reason: str) -> None:
    """Mark the current call as refused (answered OK, but with a no): logged alone."""
    _refusal.set(reason)


@dataclass
class _Tally:
    calls: int = 0
    seconds: float = 0.0
    slowest: float = 0.0


class AccessLog:
    def __init__(self, interval: float = INTERVAL, logger: logging.Logger = access_logger) -> None:
        self.interval = interval
        self._logger = logger
        self._tallies: dict[tuple[str, str, str, str, str], _Tally] = {}
        self._window_start = time.monotonic()
        self._since = time.time()

    def record(
        self,
        method: str,
        code: str,
        seconds: float,
        principal: str,
        peer: str,
        transport: str = "grpc",
    ) -> None:
        """One finished call. ``code`` is the status code's name."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        refusal = _refusal.get()
        summarised = (
            code in SUMMARISED_FAILURES if code != "OK" else not refusal and method in SUMMARISED
        )
        if not summarised or logger.isEnabledFor(logging.DEBUG):
            fields = {
                "category": "access",
                "method": method,
                "code": code,
                "ms": round(seconds * 1000, 3),
                "principal": principal,
                "peer": peer,
                "transport": transport,
            }
            if refusal:
                fields["refused"] = refusal
            logger.info("rpc", extra=fields)
            return
        key = (method, code, principal, peer, transport)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally()
        tally.calls += 1
        tally.seconds += seconds
        if seconds > tally.slowest:
            tally.slowest = seconds
        if len(self._tallies) >= MAX_KEYS or time.monotonic() - self._window_start >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write the summaries of the window so far and start a new one."""
        tallies, self._tallies = self._tallies, {}
        now = time.monotonic()
        seconds = now - self._window_start
        self._window_start = now
        since, self._since = self._since, time.time()
        for (method, code, principal, peer, transport), tally in tallies.items():
            self._logger.info(
                "rpc summary",
                extra={
                    "category": "access",
                    "method": method,
                    "code": code,
                    "principal": principal,
                    "peer": peer,
                    "transport": transport,
                    "calls": tally.calls,
                    "ms_mean": round(tally.seconds / tally.calls * 1000, 3),
                    "ms_max": round(tally.slowest * 1000, 3),
                    "window_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)),
                    "window_seconds": round(seconds, 3),
                },
            )
