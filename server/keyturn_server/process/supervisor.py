"""``keyturn serve --workers N``: one supervisor, N serving processes on one port.

A Python server is bound by one core; N processes use N. The supervisor holds the data
directory (:mod:`lock`), does the first-start work once (:func:`keyturn_server.bootstrap.prepare`),
checks and holds the ports the workers will share (:mod:`ports`), then runs ``keyturn
serve`` again for each worker with its role in the environment (:mod:`worker`). Workers
share the SQLite file (its write lock serialises their commits, so usage counts stay
exact), one of them schedules (:mod:`leader`), and each wakes the others after commits
that made events (:mod:`peers`).

The supervisor says "listening" once every worker serves, passes SIGTERM and SIGINT on
and waits for the workers to drain, and restarts a worker that dies or hangs (a worker's
event loop writes a byte to the supervisor every second; one silent for
``--worker-timeout`` is killed: it would hold its share of connections, and perhaps the
scheduler, while doing nothing) (after 1 s, doubling
to 30 s while it keeps dying; a worker that served a minute starts again from 1 s). Silence
counts only while the supervisor itself runs: after a pause of its own (the whole tree
stopped and continued) every worker's clock starts again. If workers die more than
``MAX_CRASHES`` times within ``CRASH_WINDOW`` (hangs it killed are not counted) it stops
them all and exits 1, so that systemd or an orchestrator sees the failure. Workers stop by
themselves when the supervisor is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keyturn_server.observability import worker_metrics
from keyturn_server.process import figures, overrun
from keyturn_server.process.leader import LOCK_FILE as SCHEDULER_LOCK
from keyturn_server.process.ports import PortUnavailable, SharedPorts, check_free
from keyturn_server.process.worker import WorkerRole
from keyturn_server.settings import Settings, split_address

log = logging.getLogger("keyturn.app")

#: How long a worker may take to start serving (a first start on a large store checks
#: the whole file).
START_TIMEOUT = 300.0
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0
#: A worker that served this long restarts from FIRST_BACKOFF again.
HEALTHY_AFTER = 60.0
MAX_CRASHES = 5
CRASH_WINDOW = 60.0
#: How often the supervisor looks at its workers.
TICK = 1.0
#: A turn of the supervisor's loop this much later than TICK means it did not run (the
#: process tree paused: Ctrl-Z, docker pause, a cgroup freeze, a suspended VM, or the
#: supervisor alone stopped). What it heard before is stale then, and a worker paused
#: with it could not have spoken: every silence clock starts again. Twice the tick, so
#: that even the shortest --worker-timeout (3 s) cannot run out over such a pause.
PAUSED_AFTER = 2 * TICK


class StartFailed(Exception):
    """The server cannot start; the message is the one line to print."""


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float | None = None
    #: The read end of the pipe it says "ready", then "alive" once a second, on.
    pipe: int | None = None
    #: When it last said so (time.monotonic).
    heard: float = 0.0
    #: The supervisor killed it for its silence (a hang, not a crash of its own).
    hung: bool = False


@dataclass
class Supervisor:
    settings: Settings
    #: The command line to run again for each worker (``serve ...``).
    argv: list[str]
    #: File descriptors every worker inherits (the data-directory lock).
    inherit: tuple[int, ...] = ()
    listen: tuple[str, ...] = ()
    http_listen: tuple[str, ...] = ()
    _ports: SharedPorts = field(default_factory=SharedPorts)
    _workers: list[_Worker] = field(default_factory=list)
    _crashes: deque[float] = field(default_factory=deque)
    _stopping: bool = False
    _leader_pid: int | None = None
    _peers: Path | None = None
    _restarting: set[asyncio.Future[None]] = field(default_factory=set)
    #: --metrics-listen: every worker's figures, merged (observability/worker_metrics.py).
    _metrics: Any = None

    def reserve_ports(self) -> list[str]:
        """Hold every listen address for the workers; warnings to log (a default HTTP
        port in use turns HTTP off, as with one process)."""
        warnings = []
        try:
            self.listen = tuple(self._ports.reserve(a) for a in self.settings.listen)
            http = []
            for address in self.settings.http_listen:
                try:
                    http.append(self._ports.reserve(address, "--http-listen"))
                except PortUnavailable:
                    if not self.settings.http_listen_is_default:
                        raise
                    warnings.append(
                        f"HTTP/JSON is off: the default address {address} is in use; "
                        "pass --http-listen HOST:PORT (or off)"
                    )
            self.http_listen = tuple(http)
            self._serve_metrics()
        except PortUnavailable as exc:
            self._ports.close()
            raise StartFailed(str(exc)) from None
        return warnings

    # --- workers ---------------------------------------------------------------------

    def _secrets(self) -> dict[str, str]:
        key = self.settings.master_key
        return {"MASTER_KEY": key} if key else {}

    async def _spawn(self, worker: _Worker) -> int:
        """Start ``worker``; the read end of its readiness pipe."""
        assert self._peers is not None
        ready_read, ready_write = os.pipe()
        role = WorkerRole(
            index=worker.index,
            count=self.settings.workers,
            peers=self._peers,
            supervisor=os.getpid(),
            ready_fd=ready_write,
            listen=self.listen,
            http_listen=self.http_listen,
        )
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "keyturn_server",
                *self.argv,
                # The master key was withheld from this process's environment
                # (hardening.py): each worker gets it from here, and only they do.
                env={**os.environ, **role.environment(), **self._secrets()},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,  # the supervisor speaks for them
                pass_fds=(ready_write, *self.inherit),
            )
        finally:
            os.close(ready_write)
        worker.started = time.monotonic()
        worker.restart_at = None
        worker.hung = False
        return ready_read

    async def _ready(self, worker: _Worker, ready_read: int) -> bool:
        """Wait until ``worker`` says it serves (then keep listening to it); False if it
        ended first."""
        loop = asyncio.get_running_loop()
        try:
            said = await asyncio.wait_for(
                loop.run_in_executor(None, os.read, ready_read, 16), START_TIMEOUT
            )
        except TimeoutError:
            said = b""
            self._kill_unstarted(worker)
        if not said.startswith(b"ready"):
            os.close(ready_read)
            return False
        os.set_blocking(ready_read, False)
        worker.pipe, worker.heard = ready_read, time.monotonic()
        loop.add_reader(ready_read, self._hear, worker)
        return True

    def _kill_unstarted(self, worker: _Worker) -> None:
        """A worker still starting after START_TIMEOUT is stuck (a lock it waits for, a
        hung import): killed, the loop restarts it as one that hung. Before, it was left
        running, never listened to again and never replaced: its share of the server was
        gone until the next restart of the whole server."""
        process = worker.process
        if process is None or process.returncode is not None:
            return
        log.error(
            "worker %d did not start within %.0f s; killing it",
            worker.index,
            START_TIMEOUT,
            extra={"category": "error", "worker": worker.index, "pid": process.pid},
        )
        worker.hung = True
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    def _hear(self, worker: _Worker) -> None:
        pipe = worker.pipe
        if pipe is None:
            return
        try:
            said = os.read(pipe, 64)
        except BlockingIOError:
            return
        except OSError:
            said = b""
        if said:
            worker.heard = time.monotonic()
        else:  # the worker ended
            self._deafen(worker)

    def _deafen(self, worker: _Worker) -> None:
        if worker.pipe is not None:
            asyncio.get_running_loop().remove_reader(worker.pipe)
            os.close(worker.pipe)
            worker.pipe = None

    def _listen_again(self, now: float) -> None:
        """After a pause of the supervisor itself: judge silence from now on only."""
        for worker in self._workers:
            worker.heard = now

    def _kill_silent(self, now: float) -> None:
        """SIGKILL workers that stopped saying they run; the loop restarts them."""
        timeout = self.settings.worker_timeout.total_seconds()
        if not timeout:
            return
        for worker in self._workers:
            # What a worker wrote may not have been dispatched yet: read it first.
            self._hear(worker)
            process = worker.process
            silent = now - worker.heard
            if worker.pipe is None or process is None or process.returncode is not None:
                continue
            if silent <= timeout:
                continue
            log.error(
                "worker %d (pid %d) has not run for %.0f s (--worker-timeout); killing it",
                worker.index,
                process.pid,
                silent,
                extra={"category": "error", "worker": worker.index, "pid": process.pid},
            )
            self._deafen(worker)
            worker.hung = True
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def start(self) -> None:
        """Start every worker and wait until all serve (or raise StartFailed)."""
        self._peers = Path(tempfile.mkdtemp(prefix="keyturn-workers-"))
        self._workers = [_Worker(i) for i in range(self.settings.workers)]
        pipes = [await self._spawn(w) for w in self._workers]
        ready = await asyncio.gather(
            *(self._ready(w, r) for w, r in zip(self._workers, pipes, strict=True))
        )
        failed = [w for w, ok in zip(self._workers, ready, strict=True) if not ok]
        if failed:
            await self.stop()
            codes = ", ".join(f"worker {w.index}: {_exit_of(w)}" for w in failed)
            raise StartFailed(f"workers did not start ({codes}); their reasons are above")
        log.info(
            "keyturn workers serving",
            extra={
                "category": "app",
                "workers": len(self._workers),
                "pids": ",".join(str(w.process.pid) for w in self._workers if w.process),
            },
        )

    def _serve_metrics(self) -> None:
        """Bind --metrics-listen now, with the other ports: a port in use stops the start
        before any worker runs. Until the workers answer, a scrape has no figures."""
        if not self.settings.metrics_listen:
            return
        address = self.settings.metrics_listen
        check_free(address, "--metrics-listen")
        host, port = split_address(address)
        try:
            self._metrics = worker_metrics.serve_supervisor(
                host or "127.0.0.1", port, self._metrics_sockets
            )
        except OSError as exc:
            raise PortUnavailable(f"cannot listen on {address}: {exc.strerror or exc}") from None

    def _metrics_sockets(self) -> list[Path]:
        peers = self._peers
        if peers is None:
            return []
        return [figures.socket_path(peers, w.index) for w in self._workers]

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics is None else int(self._metrics.server_port)

    async def supervise(self, stop: asyncio.Event) -> int:
        """Keep the workers running until ``stop``; the exit code."""
        turned = time.monotonic()
        while not stop.is_set():
            self._note_leader()
            exits = [
                asyncio.ensure_future(w.process.wait())
                for w in self._workers
                if w.process is not None and w.process.returncode is None
            ]
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([stopping, *exits], timeout=TICK, return_when="FIRST_COMPLETED")
            for task in (stopping, *exits):
                task.cancel()
            if stop.is_set():
                break
            now = time.monotonic()
            if now - turned > PAUSED_AFTER:
                self._listen_again(now)
            self._kill_silent(now)
            for worker in self._workers:
                ended = worker.process is not None and worker.process.returncode is not None
                if ended and not self._crashed(worker, now):
                    await self.stop()
                    return 1
                if worker.restart_at is not None and now >= worker.restart_at:
                    pipe = await self._spawn(worker)
                    self._restarting.add(asyncio.ensure_future(self._restarted(worker, pipe)))
            turned = time.monotonic()
        await self.stop()
        return 0

    def _crashed(self, worker: _Worker, now: float) -> bool:
        """Note a worker's death and plan its restart; False once they keep dying."""
        code = "killed: it hung" if worker.hung else _exit_of(worker)
        self._deafen(worker)
        worker.process = None
        # A hang is not a crash loop: each one took --worker-timeout to find, and the
        # backoff below still spaces the restarts of a worker that hangs again and again.
        # Counting them would end the server for a host that starved all its workers.
        if not worker.hung:
            self._crashes.append(now)
        while self._crashes and now - self._crashes[0] > CRASH_WINDOW:
            self._crashes.popleft()
        if len(self._crashes) > MAX_CRASHES:
            log.error(
                "workers keep dying; stopping the server",
                extra={"category": "error", "crashes": len(self._crashes)},
            )
            return False
        if now - worker.started >= HEALTHY_AFTER:
            worker.backoff = FIRST_BACKOFF
        log.error(
            "worker %d exited (%s); restarting it in %.0f s",
            worker.index,
            code,
            worker.backoff,
            extra={"category": "error", "worker": worker.index},
        )
        worker.restart_at = now + worker.backoff
        worker.backoff = min(worker.backoff * 2, MAX_BACKOFF)
        return True

    async def _restarted(self, worker: _Worker, pipe: int) -> None:
        ready = await self._ready(worker, pipe)
        self._restarting = {t for t in self._restarting if not t.done()}
        if ready:
            pid = worker.process.pid if worker.process else 0
            log.info(
                "worker %d serves again",
                worker.index,
                extra={"category": "app", "worker": worker.index, "pid": pid},
            )

    def _note_leader(self) -> None:
        """Log which worker schedules whenever that changes (SQLite: the lock's holder)."""
        if self.settings.store:
            return  # PostgreSQL: the store's own leadership, among all replicas
        try:
            text = (self.settings.data_dir / SCHEDULER_LOCK).read_text().strip()
            pid = int(text) if text else None
        except (OSError, ValueError):
            return
        if pid is None or pid == self._leader_pid:
            return
        for worker in self._workers:
            if worker.process is not None and worker.process.pid == pid:
                self._leader_pid = pid
                log.info(
                    "worker %d (pid %d) runs the scheduler",
                    worker.index,
                    pid,
                    extra={"category": "app", "worker": worker.index, "pid": pid},
                )

    def reload(self) -> None:
        """SIGHUP: each worker reads its certificate and --client-identities again."""
        for worker in self._workers:
            # Only to those that said they serve: one still starting may not handle
            # SIGHUP yet (its default action ends it), and reads everything fresh anyway.
            if worker.pipe is None or worker.process is None:
                continue
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        """SIGTERM every worker, wait for them to drain, SIGKILL the ones that do not."""
        self._stopping = True
        live = [w.process for w in self._workers if w.process and w.process.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        # Past a worker's own watch (process/overrun.py), so that it says where it is
        # stuck before it is killed.
        grace = self.settings.grace_period.total_seconds() + overrun.OVERRUN + 2
        waits = [asyncio.ensure_future(p.wait()) for p in live]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for task in pending:
                task.cancel()
        for worker in self._workers:
            stuck = worker.process
            if stuck is not None and stuck in live and stuck.returncode is None:
                log.error(
                    "worker %d (pid %d) did not stop within %.0f s of SIGTERM; killed: "
                    "the key and access-token use counts it had not flushed are lost",
                    worker.index,
                    stuck.pid,
                    grace,
                    extra={"category": "error", "worker": worker.index, "pid": stuck.pid},
                )
                with contextlib.suppress(ProcessLookupError):
                    stuck.kill()
                await stuck.wait()
        for worker in self._workers:
            self._deafen(worker)
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        self._ports.close()
        if self._peers is not None:
            shutil.rmtree(self._peers, ignore_errors=True)
            self._peers = None


def _exit_of(worker: _Worker) -> str:
    process = worker.process
    if process is None or process.returncode is None:
        return "did not say it serves"
    code = process.returncode
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
