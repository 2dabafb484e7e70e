"""Python's cyclic garbage collector, set for a long-running server once it has started.

A serving process holds a large, stable heap (modules, protobuf descriptors, grpc and
aiohttp, the settled-row and row-MAC caches) and makes many short-lived objects per call,
nearly all freed by reference counting. With CPython's default threshold (a young
collection every 700 container allocations) the collector ran every few calls, and the
older generations it triggered walked the stable heap again and again: under ValidateHandle
load that cost 7-12% of the server's CPU per request (bench.http_ab and bench.ab, A/B
against the defaults). So, once the server is up:

- what start-up made is frozen (``gc.freeze``): moved to a generation no collection
  walks; it lives as long as the process anyway;
- young collections run every ``YOUNG`` container allocations instead of 700, and the
  older ones every ``OLDER`` of the younger. Garbage in reference cycles is rare on the
  call paths, so at most a few MiB wait a little longer to be freed.

gc.freeze came into CPython (3.7) from Instagram's engineers for servers of this shape.
"""

from __future__ import annotations

import gc

YOUNG = 20_000
OLDER = 20


def settle_after_start() -> None:
    """Freeze what start-up made and space collections out (see the module docstring)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, OLDER, OLDER)
