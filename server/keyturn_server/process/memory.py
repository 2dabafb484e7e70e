"""How the server's process uses memory: the C allocator's settings.

A request is received whole and held several times over while it is parsed (up to
``limits.MAX_REQUEST`` each). glibc's default raises its mmap threshold as large blocks
are freed, so after a flood of large requests their memory stayed in the heap: 256
requests of 1 MiB in flight left the server at 1.6 GB once they were answered
(tests/security/test_large_requests.py). A fixed threshold (which also stops that
raising) maps such buffers apart and unmaps them when freed, and two arenas per process
(the default is eight per core) keep grpc's threads from each holding a heap of its own.
"""

from __future__ import annotations

import ctypes
import sys

#: glibc's mallopt parameters (malloc.h).
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Allocations from this size up get pages of their own, given back when freed.
LARGE_ALLOCATION = 64 * 1024


def return_large_buffers() -> bool:
    """Have glibc give the memory of large buffers back to the system once freed;
    False where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION)) and bool(mallopt(M_ARENA_MAX, 2))
