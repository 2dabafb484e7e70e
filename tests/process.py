"""The real server as a separate process, for tests that kill it or watch its resources."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import MASTER_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit_open_files(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


class ServerProcess:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-server.log"
        self.stdout = data_dir.parent / f"{data_dir.name}-server.out"
        #: Environment variables the server gets on top of the test's.
        self.env: dict[str, str] = {}
        #: The HTTP listener's port, when the server has one this object gave it.
        self.http_port: int | None = None
        #: RLIMIT_NOFILE (soft and hard) of the server process; None: the test's.
        self.open_files: int | None = None
        #: A command the server runs under (e.g. setpriv to drop capabilities).
        self.prefix: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> None:
        env = {**os.environ, "MASTER_KEY": MASTER_KEY, "LOG_LEVEL": "warning", **self.env}
        command = [
            *self.prefix,
            sys.executable,
            "-m",
            "keyturn_server",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            self.address,
            "--caller-rate-limit",
            "0",
            *self.extra,
        ]
        with self.log.open("ab") as log, self.stdout.open("ab") as out:
            limit = self.open_files
            self.process = subprocess.Popen(
                command,
                env=env,
                stdout=out,
                stderr=log,
                preexec_fn=None if limit is None else lambda: _limit_open_files(limit),
            )

    async def start(self, within: float = 30) -> None:
        self.spawn()
        await self.wait_listening(within)
        await self.wait_serving(within)

    def start_http(self, within: float = 30) -> str:
        """Start with an HTTP listener and wait, without an event loop (for synchronous
        fixtures), until it answers; its base URL."""
        self.http_port = free_port()
        http = f"127.0.0.1:{self.http_port}"
        self.extra += ["--http-listen", http]
        self.spawn()
        base = f"http://{http}"
        deadline = time.monotonic() + within
        while True:
            assert self.process is not None and self.process.poll() is None, (
                f"server exited: {self.log.read_text()[-2000:]}"
            )
            try:
                if requests.get(base + "/openapi.json", timeout=1).ok:
                    return base
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"HTTP listener not answering after {within}s")
            time.sleep(0.1)

    async def wait_listening(self, within: float) -> None:
        """Until the server says it listens (with --workers: once every worker serves)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while "keyturn listening on" not in self.stdout.read_text(errors="replace"):
            assert self.process is not None and self.process.poll() is None, (
                f"server exited: {self.log.read_text()[-2000:]}"
            )
            if loop.time() > deadline:
                raise TimeoutError(f"server not listening after {within}s")
            await asyncio.sleep(0.05)

    async def wait_serving(self, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert self.process is not None and self.process.poll() is None, (
                    f"server exited: {self.log.read_text()[-2000:]}"
                )
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"server not serving after {within}s")
                await asyncio.sleep(0.05)

    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, like a power cut to the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.process = None
        return code

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))
