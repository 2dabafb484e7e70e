"""What a serving process started by the supervisor is told, through its environment.

The supervisor runs ``keyturn serve`` again for each worker with the same arguments and
environment, plus these variables: which worker it is, where the peers' wake-up sockets
are, the concrete addresses to share (a port 0 resolved once for all), and a pipe to say
"serving" on. They are internal: nothing but the supervisor sets them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

INDEX = "KEYTURN_WORKER_INDEX"
COUNT = "KEYTURN_WORKER_COUNT"
PEERS = "KEYTURN_WORKER_PEERS"
SUPERVISOR = "KEYTURN_WORKER_SUPERVISOR"
READY_FD = "KEYTURN_WORKER_READY_FD"
LISTEN = "KEYTURN_WORKER_LISTEN"
HTTP_LISTEN = "KEYTURN_WORKER_HTTP_LISTEN"
VARIABLES = (INDEX, COUNT, PEERS, SUPERVISOR, READY_FD, LISTEN, HTTP_LISTEN)

#: ``--workers auto``: one per available core, at most this many. Past it the shared
#: SQLite write path gains nothing (bench: validations/s by processes).
AUTO_CAP = 8


@dataclass(frozen=True)
class WorkerRole:
    index: int
    count: int
    peers: Path
    supervisor: int
    ready_fd: int
    listen: tuple[str, ...]
    http_listen: tuple[str, ...]

    @staticmethod
    def from_env(env: Mapping[str, str]) -> WorkerRole | None:
        if INDEX not in env:
            return None
        return WorkerRole(
            index=int(env[INDEX]),
            count=int(env[COUNT]),
            peers=Path(env[PEERS]),
            supervisor=int(env[SUPERVISOR]),
            ready_fd=int(env[READY_FD]),
            listen=tuple(json.loads(env[LISTEN])),
            http_listen=tuple(json.loads(env[HTTP_LISTEN])),
        )

    def environment(self) -> dict[str, str]:
        return {
            INDEX: str(self.index),
            COUNT: str(self.count),
            PEERS: str(self.peers),
            SUPERVISOR: str(self.supervisor),
            READY_FD: str(self.ready_fd),
            LISTEN: json.dumps(list(self.listen)),
            HTTP_LISTEN: json.dumps(list(self.http_listen)),
        }


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, and a cgroup CPU quota if one is
    set (a container limited to 2 CPUs on a 64-core host gets 2)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return cores


def parse_workers(text: str) -> int:
    """``--workers``: a count, or ``auto`` (one per available core, at most AUTO_CAP)."""
    if text.strip().lower() == "auto":
        return min(available_cores(), AUTO_CAP)
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 64:
        raise ValueError(f"--workers {text!r}: give a number of processes (1 to 64) or auto")
    return count
