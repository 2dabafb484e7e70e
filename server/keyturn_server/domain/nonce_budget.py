"""The AES-GCM nonce budget of each key version.

Every Encrypt draws a fresh random 96-bit nonce. Two equal nonces under one key reveal
the XOR of two plaintexts and let the authentication key be recovered, and with random
nonces a repeat becomes likely long before 2^96: NIST SP 800-38D (section 8.3) allows
at most 2^32 encryptions per key with random nonces, which keeps the chance of any
repeat under 2^-32. Keyturn therefore counts encryptions per key version:

- Durably, without a write per Encrypt: a process reserves a block of the version's
  budget in the store (``key_versions.nonces_reserved``, under the row's MAC) and spends
  it in memory. A crash or a restart loses the unspent rest of a block, so the stored
  count only ever over-counts: budget can be wasted, never used twice. Replicas and
  worker processes each reserve their own blocks from the same stored count.
- When a version's reservations pass the rotation threshold (half the budget by
  default), the key rotates (a new primary version, audited as a rotation by the
  system), and the Encrypt that noticed goes on with the new version.
- An Encrypt that can get no budget on the primary (the stored count is at the budget
  and the key cannot rotate) is refused with FAILED_PRECONDITION, never served past it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from keyturn_server.domain.access import SYSTEM
from keyturn_server.domain.key_lifecycle import KeyLifecycle
from keyturn_server.domain.keys import Key, KeyState
from keyturn_server.domain.repositories import Repository, Store

#: NIST SP 800-38D, 8.3: invocations of the authenticated encryption with random IVs.
NIST_RANDOM_NONCE_LIMIT = 2**32


@dataclass(frozen=True)
class NonceLimits:
    """How many encryptions a version may do, and when its key rotates."""

    budget: int = NIST_RANDOM_NONCE_LIMIT

    @property
    def rotate_at(self) -> int:
        return self.budget // 2

    @property
    def block(self) -> int:
        """Encryptions reserved per store write: at most a 1/1024th of the budget
        (wasted at worst on a restart), at least one."""
        return max(1, min(65_536, self.budget // 1024))


@dataclass
class _Block:
    next: int
    end: int


@dataclass(frozen=True)
class Refill:
    """What reserving a version's next block found."""

    #: The reserved total after the block; 0 when nothing could be reserved.
    total: int
    #: Its key should rotate first (past the threshold, or out of budget).
    rotate: bool

    @property
    def usable(self) -> bool:
        return self.total > 0


class NonceBudget:
    def __init__(self, store: Store, lifecycle: KeyLifecycle, limits: NonceLimits) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self.limits = limits
        self._blocks: dict[tuple[str, int], _Block] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def take(self, key_id: str, version: int) -> bool:
        """Spend one encryption of the block in hand; False when there is none left."""
        block = self._blocks.get((key_id, version))
        if block is None or block.next >= block.end:
            return False
        block.next += 1
        return True

    def lock(self, key_id: str) -> asyncio.Lock:
        """Held while a key's budget is refilled or the key rotated for it, so that
        concurrent Encrypts wait for one refill instead of each doing its own."""
        found = self._locks.get(key_id)
        if found is None:
            if len(self._locks) > 10_000:
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            found = self._locks[key_id] = asyncio.Lock()
        return found

    async def refill(self, key_id: str, version: int) -> Refill:
        """Reserve the next block of a version. Past the rotation threshold the block is
        not spent yet: the key is to rotate first, and the block is the fallback should
        that fail (:meth:`spend`)."""
        limits = self.limits
        total = await self._store.write(
            lambda repo: repo.reserve_nonces(key_id, version, limits.block, limits.budget)
        )
        if total is None:
            return Refill(0, rotate=True)
        refill = Refill(total, rotate=total > limits.rotate_at)
        if not refill.rotate:
            self.spend(key_id, version, refill)
        return refill

    def spend(self, key_id: str, version: int, refill: Refill) -> None:
        """Make a reserved block available to :meth:`take`."""
        self._blocks[(key_id, version)] = _Block(refill.total - self.limits.block, refill.total)

    async def rotate(self, key: Key) -> None:
        """A new primary for ``key``, because its primary used up its share of nonces."""
        # The server's own work (caller None): never refused by the generation caps.
        secret, public_pem = await self._lifecycle.maker.make(key.algorithm, key.key_length, None)
        version = key.primary_version

        def work(repo: Repository) -> None:
            current = repo.get_key(key.id, for_update=True)
            if current is None or current.state is not KeyState.ACTIVE:
                return
            if current.primary_version != version:
                return  # rotated meanwhile (another Encrypt, a replica, the scheduler)
            self._lifecycle.add_primary(
                repo,
                current,
                secret=secret,
                public_pem=public_pem,
                by=SYSTEM,
                user_id="",
                reason=f"version {version} reached its AES-GCM nonce budget threshold "
                f"({self.limits.rotate_at} encryptions)",
            )

        await self._store.write(work)
        self.forget(key.id, version)

    def forget(self, key_id: str, version: int) -> None:
        self._blocks.pop((key_id, version), None)
