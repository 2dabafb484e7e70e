"""Making new key material, with expensive generation bounded per caller and overall.

Random bytes (AES, HMAC) and elliptic-curve keys cost microseconds and are made inline.
An RSA key costs tens of milliseconds of CPU, and `cryptography` holds the GIL while it
makes one: in a worker thread it stalled the event loop for up to ~200 ms per key here,
and 8 concurrent GenerateKey calls from one caller pushed another caller's p90 to
916 ms. So RSA generation runs in a separate process (a small pool, started on first
use with ``spawn``: forking a process that runs gRPC's threads is unsafe), at most
``overall`` at a time, and one caller may have at most ``per_caller`` generations
running or queued. Past either bound the call is refused with RESOURCE_EXHAUSTED and a
retry delay; the scheduler's own rotations wait for a slot instead of being refused.

Measured with a quiet caller polling GetKey while 8 callers each made an RSA key (busy
2-core machine): p50/p90 6.7/20.1 ms with generation in threads, 0.8/3.6 ms in the pool.
As with any ``spawn`` pool, a script that embeds the server must guard its entry point
(``if __name__ == "__main__":``); ``keyturn serve`` and ``python -m`` entry points are.
A pool process dies with the server even when the server is SIGKILLed (Linux: a
parent-death signal); a spawn pool's children hold both ends of their task pipe, so they
never see it close, and its resource tracker ends once they do.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta

from keyturn_server.crypto import material
from keyturn_server.domain.errors import ResourceExhausted

#: Algorithms whose generation is expensive enough to bound and move off the loop.
EXPENSIVE = frozenset({"rsa"})
#: Generations that may wait for a slot, per slot, before callers are refused.
QUEUE_PER_SLOT = 16
RETRY_AFTER = timedelta(seconds=1)
#: prctl(2): the signal a process gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1


def default_overall() -> int:
    """Half the cores (at least one): the other half keeps serving."""
    return max(1, (os.cpu_count() or 2) // 2)


class MaterialMaker:
    def __init__(
        self,
        overall: int | None = None,
        per_caller: int = 2,
        prepare: Callable[[], object] | None = None,
    ) -> None:
        """``prepare`` runs first in each worker process (a module-level function: it
        is pickled): the server's hardening, since workers hold private keys too."""
        self.overall = overall or default_overall()
        self._prepare = prepare
        self.per_caller = per_caller
        self._slots = asyncio.Semaphore(self.overall)
        #: Generations running or queued, in total and per caller.
        self._pending = 0
        self._by_caller: dict[str, int] = {}
        self._pool: ProcessPoolExecutor | None = None

    async def make(
        self, algorithm: str, length: int, caller: str | None
    ) -> tuple[bytes, str | None]:
        """(secret, public PEM) for a new version. ``caller`` is the principal's name, or
        None for the server's own work (scheduled rotation), which is never refused."""
        if algorithm not in EXPENSIVE:
            return material.generate(algorithm, length)
        if caller is not None:
            self._admit(caller)
            self._by_caller[caller] = self._by_caller.get(caller, 0) + 1
        self._pending += 1
        try:
            async with self._slots:
                return await self._generate(algorithm, length)
        finally:
            self._pending -= 1
            if caller is not None:
                left = self._by_caller[caller] - 1
                if left:
                    self._by_caller[caller] = left
                else:
                    del self._by_caller[caller]

    def _admit(self, caller: str) -> None:
        if self._by_caller.get(caller, 0) >= self.per_caller:
            raise ResourceExhausted(
                f"{caller!r} already has {self.per_caller} key generations in progress "
                "(--max-key-generations-per-caller); wait for one to finish",
                reason="KEY_GENERATION_PER_CALLER",
                retry_after=RETRY_AFTER,
                metadata={"limit": str(self.per_caller)},
            )
        if self._pending >= self.overall * (1 + QUEUE_PER_SLOT):
            raise ResourceExhausted(
                "the server is busy generating keys (--max-key-generations); retry shortly",
                reason="KEY_GENERATION_BUSY",
                retry_after=RETRY_AFTER,
                metadata={"limit": str(self.overall)},
            )

    async def _generate(self, algorithm: str, length: int) -> tuple[bytes, str | None]:
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                return await loop.run_in_executor(
                    self._executor(), material.generate, algorithm, length
                )
            except BrokenProcessPool:  # a worker died (killed, out of memory): start anew
                self._pool = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.overall,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_pool_process,
                # Started from the event loop's thread (submit), which lives as long as
                # the process: the parent-death signal is tied to that thread.
                initargs=(os.getpid(), self._prepare),
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _start_pool_process(parent: int, prepare: Callable[[], object] | None) -> None:
    """First in each pool process: end with ``parent``, then ``prepare``."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl here: such a pool process outlives a killed server, as before
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)
    if prepare is not None:
        prepare()
