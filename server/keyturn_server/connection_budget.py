"""File descriptors, and how many connections each listener may hold.

Every connection is a file descriptor, and so are the database, the peers' sockets and
the files the server opens. With the common default soft limit of 1,024 open files, about
a thousand idle or deliberately slow connections to one listener (a slowloris) left the
process unable to accept anything else, on any listener: gRPC callers were refused while
the HTTP listener held half-sent requests. So the server raises its soft limit to the hard
one at start (as the Go runtime does for every Go server), keeps a reserve for its own
files, and splits the rest between the gRPC and HTTP listeners; each refuses connections
past its share, and slow handshakes and idle connections are closed (grpc's handshake
timeout; the HTTP listener's idle timeout), so a flood of them costs the attacker a steady
effort and the other listener nothing.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

#: Descriptors kept for the store, the pools, the peers' sockets, logs and TLS files.
RESERVE = 256
#: No listener holds more connections than this by default, whatever the limit: each costs
#: memory (grpc's transport buffers, aiohttp's parser), and more is a deliberate choice
#: (--max-connections).
DEFAULT_CAP = 10_000
#: A connection that has not finished its TLS and HTTP/2 handshakes by then is closed
#: (grpc's default is 120 s).
HANDSHAKE_TIMEOUT_S = 10


@dataclass(frozen=True)
class OpenFiles:
    soft: int
    hard: int

    def per_listener(self, listeners: int = 2) -> int:
        """Connections one listener may hold, out of what the limit leaves."""
        spare = max(self.soft - RESERVE, 2 * listeners)
        return max(1, min(DEFAULT_CAP, spare // listeners))


def raise_open_files_limit() -> OpenFiles:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the limits in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # a sandbox may refuse; the shares below follow what is in force
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return OpenFiles(soft, hard if hard != resource.RLIM_INFINITY else soft)
