"""Keys as last read from the store, kept per process for the calls that use them in
place (Encrypt, Decrypt, Sign, GetKey...), so that a call reads no rows while nothing
has changed.

Reading a key costs two SELECTs, a MAC check of every row and a record built from them
(about 30 µs); most calls would read the same rows again. A cached record is trusted
only while the store's change stamp (``Store.change_stamp``) is the one taken before it
was read: any commit since, by any process and of any table, empties the cache, and the
next call reads (and verifies) the rows again. So:

- a key removed, destroyed, expired or rotated is seen by the very next call on every
  process: this one's commits move the stamp like another worker's do, before their
  callers are answered;
- a row edited behind the server's back moves the stamp too, and is read again, MAC
  checked, on the next call (DATA_LOSS if it was forged);
- usage counts flushed by another worker are not hidden behind a stale record.

Emptying on *any* commit is coarse: under a steady stream of writes (ValidateHandle's
commits) a key is read again once per commit that happens between two uses of it, never
more often than without the cache. Dropping only the changed keys would need every
change of a key to be named (usage flushes and edits behind the server's back are not),
for a gain only under mixed load.

On SQLite the stamp is ``PRAGMA data_version`` of the read connection (about 1-3 µs). On
PostgreSQL there is none (store/postgres/store.py says why) and every call reads.

The material a version decrypts with is cached apart (:mod:`key_material`), and is only
used after a record read this way says the version is still enabled. Every fresh read is
also shown to ``on_read``, which drops the material of what the record says is gone: the
process that removed or destroyed a key forgets its material at once, and the others
(workers) forget it the next time they read the key, instead of keeping it until it ages
out of the material cache.
"""

from __future__ import annotations

from collections.abc import Callable

from keyturn_server.domain.keys import Key
from keyturn_server.domain.repositories import Store

CACHE_SIZE = 4096


class KeyCache:
    def __init__(
        self,
        store: Store,
        size: int = CACHE_SIZE,
        on_read: Callable[[Key], None] | None = None,
    ) -> None:
        self._store = store
        self._size = size
        self._on_read = on_read
        self._keys: dict[str, Key] = {}
        self._stamp: int | None = None
        #: Reads that went to the store (a hit costs only the stamp).
        self.reads = 0

    def get(self, key_id: str) -> Key | None:
        """The key as committed now, with every version, verified when it was read."""
        stamp = self._store.change_stamp()
        if stamp is None:
            return self._read(key_id)
        if stamp != self._stamp:
            self._keys.clear()
            self._stamp = stamp
        key = self._keys.get(key_id)
        if key is not None:
            return key
        key = self._read(key_id)
        if key is not None:
            if len(self._keys) >= self._size:
                del self._keys[next(iter(self._keys))]  # the oldest read
            self._keys[key_id] = key
        return key

    def _read(self, key_id: str) -> Key | None:
        self.reads += 1
        key = self._store.read().get_key(key_id)
        if key is not None and self._on_read is not None:
            self._on_read(key)
        return key
