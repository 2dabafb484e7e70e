"""Key usage counts. They are advisory, so using a key in place costs no write: uses are
counted in memory and flushed in batches (every few seconds, and at shutdown); reads
show the stored count plus what is not flushed yet."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from keyturn_server.domain.errors import KeyturnError
from keyturn_server.domain.keys import Key
from keyturn_server.domain.repositories import Store


class UsageCounter:
    def __init__(self, store: Store) -> None:
        self._store = store
        #: key id -> (uses not flushed yet, last use)
        self._pending: dict[str, tuple[int, datetime]] = {}

    def count(self, key_id: str, now: datetime) -> None:
        uses, _ = self._pending.get(key_id, (0, now))
        self._pending[key_id] = (uses + 1, now)

    def with_pending(self, key: Key) -> Key:
        """``key`` as it will be once the pending uses are flushed."""
        pending = self._pending.get(key.id)
        if pending is None:
            return key
        uses, last = pending
        return dataclasses.replace(key, usage_count=key.usage_count + uses, last_used_time=last)

    async def flush(self) -> None:
        """Persist the uses counted since the last flush."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            await self._store.write(lambda repo: repo.add_key_usage(pending))
        except KeyturnError:
            # Refused (the database away, a table locked, a deadlock with another
            # replica's flush): counted again with what came since, for the next flush.
            # They used to be dropped. (A commit whose answer was lost may count twice:
            # rarer, and the counts are advisory.)
            for key_id, (uses, last) in pending.items():
                later = self._pending.get(key_id)
                if later is not None:
                    uses, last = uses + later[0], max(last, later[1])
                self._pending[key_id] = (uses, last)
            raise
