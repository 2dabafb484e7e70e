"""A commit that does not come back: the disk under the store has stalled.

A commit is one fsync, a millisecond or less here. When the disk stops answering (a
frozen filesystem, a hung network volume, a failing device retrying), the commit thread
waits in ``fsync`` for as long as that lasts, and every write waits behind it. Nothing
failed, so nothing said so: health said SERVING, ``keyturn_store_up`` 1 and the log
nothing while every change hung for minutes. A commit that has waited ``STALL_AFTER``
makes the store not writable (health NOT_SERVING, with the reason and since when), said
once in the log when it is found and once when the commit comes back.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("keyturn.store")
#: How long a commit may wait for the disk before the store is reported stalled. A
#: commit of the largest batch takes a few milliseconds here.
STALL_AFTER = 5.0


class CommitWatch:
    """When the commit in progress began, and whether its stall has been said."""

    def __init__(self, stall_after: float = STALL_AFTER) -> None:
        self.stall_after = stall_after
        self._since: float | None = None
        self._said = False

    def began(self) -> None:
        self._since = time.monotonic()

    def ended(self) -> bool:
        """The commit came back (done or failed); say so if its stall was said, and
        return whether it was."""
        said = self._said
        if self._since is not None and said:
            log.warning(
                "the store's commit came back: changes are made again",
                extra={
                    "category": "error",
                    "stalled_seconds": round(time.monotonic() - self._since, 1),
                },
            )
        self._since = None
        self._said = False
        return said

    def problem(self) -> str:
        """Why the store cannot write while its commit has waited too long, else ""."""
        if self._since is None:
            return ""
        waited = time.monotonic() - self._since
        if waited < self.stall_after:
            return ""
        if not self._said:
            self._said = True
            log.error(
                "a store commit is waiting for the disk: changes wait until it comes back",
                extra={"category": "error", "waited_seconds": round(waited, 1)},
            )
        return (
            f"a commit has waited {waited:.0f} s for the disk (a stalled fsync or a frozen "
            "filesystem): changes wait until it comes back"
        )
