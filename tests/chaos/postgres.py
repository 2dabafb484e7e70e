"""A throwaway PostgreSQL cluster that a chaos test may restart, crash or fail over.

The suite's shared cluster (scripts/services.sh) is left alone: each chaos module makes its
own in a temp dir on a free port, from the binaries Debian installs under
/usr/lib/postgresql/N/bin. As root, the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from tests.process import free_port

USER = "keyturn"
#: Every cluster made under a throwaway root, stopped when the root goes.
_started: dict[Path, list[Cluster]] = {}


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name or 0))
    return found[-1] if found else None


class Cluster:
    """One PostgreSQL server: initdb, start, stop, restart, and a standby made from it."""

    def __init__(self, root: Path, name: str = "primary") -> None:
        _started.setdefault(root, []).append(self)
        found = pg_bin()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed")
        self.bin = found
        self.root = root
        self.data = root / name
        self.log = root / f"{name}.log"
        self.port = free_port()
        self._as_postgres = os.getuid() == 0

    # --- running the server's tools ------------------------------------------------------

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=300 -c wal_level=replica -c max_wal_senders=4"
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", USER, "--no-sync")

    def standby(self, name: str = "standby") -> Cluster:
        """A streaming standby of this (running) server, started and synchronous: from
        now on a commit returns once the standby has it, so a failover loses nothing that
        was acknowledged."""
        replica = Cluster(self.root, name)
        replica._run(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            USER,
            "-D",
            str(replica.data),
            "-R",
            "-X",
            "stream",
            "--no-sync",
            "--checkpoint=fast",
        )
        replica.start()
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            conn.execute("SELECT pg_reload_conf()")
        return replica

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-o",
            self._options(),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-m",
            mode,
            "-w",
            "-o",
            self._options(),
            "restart",
        )

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "promote")

    # --- what tests ask of it -------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new, empty database; its name."""
        name = "chaos_" + secrets.token_hex(4)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return name

    def query(self, database: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            cursor = conn.execute(sql, params)  # type: ignore[arg-type]
            return list(cursor.fetchall()) if cursor.description else []

    def terminate(self, database: str, pid: int) -> bool:
        """pg_terminate_backend: the session dies as if its server process crashed."""
        [(done,)] = self.query(database, "SELECT pg_terminate_backend(%s)", (pid,))
        return bool(done)

    def lock_holder(self, database: str, lock: int) -> int | None:
        """The backend pid holding the session advisory lock ``lock`` (granted), if any."""
        rows = self.query(
            database,
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = %s "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
            (database, lock),
        )
        return int(rows[0][0]) if rows else None


@contextlib.contextmanager
def throwaway_root() -> Iterator[Path]:
    """A temp dir the ``postgres`` user may use (pytest's are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="keyturn-chaos-"))
    try:
        if os.getuid() == 0:
            shutil.chown(root, "postgres")
        yield root
    finally:
        for cluster in _started.pop(root, []):
            if cluster.data.exists():
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
