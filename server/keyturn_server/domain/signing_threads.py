"""RSA signatures in threads, a bounded share of them per caller.

An RSA private-key operation costs milliseconds (PSS with SHA-256 here: 0.8 ms at 2048
bits, 2.2 at 3072, 5.7 at 4096), against about 0.3 ms of server time for a whole
validation. Signing on the event loop stalled every caller for each signature: one
service sending 64 Sign calls at once with a 4,096-bit key (137 a second, far under its
rate) pushed another caller's ValidateHandle p90 from 9 to 526 ms. ``cryptography``
releases the GIL while it signs, so a thread frees the loop and uses another core; one
caller's signatures hold at most half the threads at once and queue behind each other,
so its flood waits for its own. Elliptic-curve signatures and MACs cost microseconds
and stay on the loop, where a thread hop would cost more than the work.
"""

from __future__ import annotations

import os

from keyturn_server.caller_threads import CallerThreads

#: Algorithms whose signatures are made in a thread.
THREADED = frozenset({"rsa"})


def default_threads() -> int:
    """As many threads as cores, at least two: the work is CPU with the GIL released."""
    return max(2, os.cpu_count() or 2)


class SigningThreads(CallerThreads):
    def __init__(self, threads: int | None = None) -> None:
        count = threads or default_threads()
        # Threads one caller may hold at once: half of them, so others always have some.
        super().__init__(count, max(1, count // 2), "keyturn-sign")
