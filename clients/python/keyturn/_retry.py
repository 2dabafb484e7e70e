"""Exponential backoff, and the retry of idempotent reads that fail with UNAVAILABLE.

Only reads are retried: a write whose answer was lost may have happened, and doing it
again (a second rotation, a second counted validation) is not what the caller asked for.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """Delays of ``initial`` seconds, multiplied by ``multiplier`` after each failure up to
    ``maximum``. ``jitter`` (0 to 1) shortens each delay by up to that fraction, at random,
    so that many clients do not reconnect in step."""

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("backoff needs 0 <= initial <= maximum and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * (1 - self.jitter * random.random())
            delay = min(delay * self.multiplier, self.maximum)


@dataclass(frozen=True)
class RetryPolicy:
    """How reads are retried: on ``codes``, with ``backoff``, for at most ``deadline``
    seconds in all (the last attempt starts before it)."""

    backoff: Backoff = field(default_factory=lambda: Backoff(0.1, 5.0, 2.0, 0.2))
    deadline: float = 30.0
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})


#: Never retry: each read is tried once.
NO_RETRY = RetryPolicy(deadline=0.0)


async def retrying(
    attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, sleep: Sleep = asyncio.sleep
) -> T:
    """The result of ``attempt()``, tried again after each failure with a retryable code
    until the policy's deadline; the last failure is raised as is."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + policy.deadline
    delays = policy.backoff.delays()
    while True:
        try:
            return await attempt()
        except grpc.aio.AioRpcError as error:
            if error.code() not in policy.codes:
                raise
            delay = next(delays)
            if loop.time() + delay > give_up:
                raise
            await sleep(delay)
