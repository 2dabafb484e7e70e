"""Refused presentations, counted per presenter: flood detection and throttling.

A *presenter* is who shows a token: the authenticated principal and the transport peer
it connects from, never the ``context.ip`` it claims (a caller could claim any address,
to slip under a per-address count or to have someone else blamed). Each refusal a
caller without rights on the handle receives (unknown, malformed, revoked, expired,
superseded, exhausted, rate-limited or context-mismatched: they all read INVALID) is
counted twice: under the presenter, and under the principal alone, so that a stolen
access token used from many peers is counted as one caller.

- The first refusal past :data:`FLOOD_THRESHOLD` in a sliding minute is an
  INVALID_TOKEN_FLOOD anomaly naming the principal and the peer (once per minute per key).
- Past the policy ``refused_per_presenter``, the presenter is *throttled*: its
  presentations are answered INVALID without looking the token up, as an unknown token
  would be, until its refusals fall back under the limit. A thief cannot enumerate
  bound contexts or sort stolen tokens at speed, and the handle's owner, a different
  presenter, is never throttled for it.

Counters live in memory (a flood is a property of live traffic; a restart forgets at
most one minute) in an LRU table of fixed capacity, each a two-bucket sliding window:
every operation is O(1) and the memory is bounded however many principals or peers
show up. The principal-wide counter is touched by every refusal of that principal, so
a flood of fresh peers cannot push it out of the table.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from keyturn_server.clock import Clock, to_micros

#: Refusals per presenter per minute that make a flood (an anomaly; nobody is refused).
FLOOD_THRESHOLD = 20
#: A principal gets this many times a presenter's allowance across all its peers.
PRINCIPAL_FACTOR = 4
#: Presenters (and principals) remembered at once.
CAPACITY = 8192
WINDOW_SECONDS = 60
_WINDOW_MICROS = WINDOW_SECONDS * 1_000_000


class _Counter:
    """Refusals in the current and the previous fixed minute (sliding estimate)."""

    __slots__ = ("current", "flagged", "minute", "previous")

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.previous = 0
        self.current = 0
        #: The minute in which a flood was last reported.
        self.flagged = -1

    def estimate(self, micros: int) -> float:
        minute = micros // _WINDOW_MICROS
        if minute != self.minute:
            self.previous = self.current if minute == self.minute + 1 else 0
            self.current = 0
            self.minute = minute
        elapsed = (micros % _WINDOW_MICROS) / _WINDOW_MICROS
        return self.previous * (1.0 - elapsed) + self.current


@dataclass(frozen=True)
class Flood:
    """A key that just crossed the flood threshold: report it."""

    principal: str
    peer: str
    refused_in_window: int


def presenter_peer(peer: str) -> str:
    """The peer as counted: an IPv6 address by its /64 (one host has the whole prefix)."""
    if ":" not in peer:
        return peer
    try:
        network = ipaddress.IPv6Network(f"{peer}/64", strict=False)
    except ValueError:
        return peer
    return str(network)


class PresenterLimiter:
    """Counts refusals per presenter and per principal; see the module docstring."""

    def __init__(self, capacity: int = CAPACITY, flood_threshold: int = FLOOD_THRESHOLD) -> None:
        self.capacity = capacity
        self.flood_threshold = flood_threshold
        self._counters: OrderedDict[tuple[str, str], _Counter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counters)

    def throttled(self, principal: str, peer: str, clock: Clock, limit: int) -> bool:
        """Whether this presenter's refusals in the last minute reached ``limit``. On
        every validation, so a lookup only: two dict reads, and the clock is read only
        for a presenter that was refused lately."""
        counters = self._counters
        presenter = counters.get((principal, peer))
        wide = counters.get((principal, ""))
        if presenter is None and wide is None:
            return False
        micros = to_micros(clock.now())
        if presenter is not None and presenter.estimate(micros) >= limit:
            return True
        return wide is not None and wide.estimate(micros) >= limit * PRINCIPAL_FACTOR

    def refused(self, principal: str, peer: str, now: datetime) -> Flood | None:
        """Count one refusal; a Flood when it makes one that is not reported yet."""
        micros = to_micros(now)
        found = self._count((principal, peer), micros, self.flood_threshold)
        wide = self._count((principal, ""), micros, self.flood_threshold * PRINCIPAL_FACTOR)
        if found is not None:
            return Flood(principal, peer, found)
        if wide is not None:
            return Flood(principal, "*", wide)
        return None

    def _count(self, key: tuple[str, str], micros: int, threshold: int) -> int | None:
        counters = self._counters
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = _Counter(micros // _WINDOW_MICROS)
            if len(counters) > self.capacity:
                counters.popitem(last=False)
        else:
            counters.move_to_end(key)
        estimate = counter.estimate(micros)
        counter.current += 1
        if estimate + 1 < threshold or counter.flagged == counter.minute:
            return None
        counter.flagged = counter.minute
        return int(estimate) + 1
