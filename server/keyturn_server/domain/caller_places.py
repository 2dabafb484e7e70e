"""Places shared by callers: each named caller holds at most ``per_caller`` at once, and
the rest of its work waits for one of its own, so one caller's flood waits behind itself
rather than in front of everyone else (caller_threads.py: threads; write_shares.py: the
store's write queue). A caller with nothing holding or waiting has no entry."""

from __future__ import annotations

import asyncio


class CallerPlaces:
    def __init__(self, per_caller: int) -> None:
        self.per_caller = per_caller
        self._callers: dict[str, _Share] = {}

    def waiting(self, caller: str) -> int:
        """Work of ``caller`` that holds a place or waits for one (0 when none)."""
        share = self._callers.get(caller)
        return share.users if share is not None else 0

    async def take(self, caller: str) -> None:
        """Wait for one of ``caller``'s places; give it back with :meth:`give_back`. A
        wait that is cancelled holds nothing."""
        share = self._callers.get(caller)
        if share is None:
            share = self._callers[caller] = _Share(self.per_caller)
        share.users += 1
        try:
            await share.places.acquire()
        except BaseException:
            self._leave(caller, share)
            raise

    def give_back(self, caller: str) -> None:
        share = self._callers[caller]
        share.places.release()
        self._leave(caller, share)

    def _leave(self, caller: str, share: _Share) -> None:
        share.users -= 1
        if not share.users:
            del self._callers[caller]


class _Share:
    """One caller's places, and its work holding or waiting for one."""

    __slots__ = ("places", "users")

    def __init__(self, places: int) -> None:
        self.places = asyncio.Semaphore(places)
        self.users = 0
