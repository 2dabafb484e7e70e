"""Exponential backoff with full jitter, and the retry loop of unary calls.

Only calls whose ``idempotency_level`` allows it are retried (see ``_policy``); one
deadline covers the call and all its attempts, each of which carries only what remains.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from keyturn import _policy

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Draw = Callable[[], float]


@dataclass(frozen=True)
class Backoff:
    """Waits that grow from ``initial`` seconds by ``multiplier`` up to ``maximum``, each
    drawn at random between 0 and that cap (full jitter), so that clients that failed
    together do not come back in step."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("backoff needs 0 <= initial <= maximum and multiplier >= 1")

    def cap(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (0 for the first)."""
        cap = self.initial
        for _ in range(retry):
            if cap >= self.maximum:
                break
            cap *= self.multiplier
        return min(cap, self.maximum)

    def delay(self, retry: int, draw: float) -> float:
        """The wait before retry ``retry`` for a random ``draw`` in [0, 1)."""
        return draw * self.cap(retry)

    def delays(self, draw: Draw = random.random) -> Iterator[float]:
        retry = 0
        while True:
            yield self.delay(retry, draw())
            retry += 1


@dataclass(frozen=True)
class RetryPolicy:
    """How retryable calls are retried: with ``backoff`` between attempts until the call's
    deadline, and at most ``max_attempts`` attempts in all when given (None: the
    deadline alone decides, as in python-api-core)."""

    backoff: Backoff = field(default_factory=Backoff)
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts counts the first attempt: at least 1")


#: Never retry: each call is tried once.
NO_RETRY = RetryPolicy(max_attempts=1)


async def retrying(
    attempt: Callable[[float | None], Awaitable[T]],
    policy: RetryPolicy,
    timeout: float | None,
    *,
    sleep: Sleep = asyncio.sleep,
    draw: Draw = random.random,
) -> T:
    """The result of ``attempt(time_left)``, tried again after each failure the policy
    retries, until the attempts or the ``timeout`` (seconds from now; None: no deadline)
    run out. The last failure is raised as is, at once when the next wait would end past
    the deadline."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    delays = policy.backoff.delays(draw)
    attempts = 0
    while True:
        attempts += 1
        left = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            return await attempt(left)
        except grpc.aio.AioRpcError as error:
            spent = policy.max_attempts is not None and attempts >= policy.max_attempts
            if spent or not _policy.retried(error):
                raise
            delay = max(next(delays), _policy.retry_delay(error) or 0.0)
            if deadline is not None and loop.time() + delay >= deadline:
                raise
            await sleep(delay)
