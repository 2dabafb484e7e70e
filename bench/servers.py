"""The servers under test, each a subprocess on a free loopback port: the real Keyturn
server, and the bare grpc.aio baselines (echo and fan-out) on the same Python and grpcio.

Every server binds port 0 and prints the address it got; output goes to a log file in
the run's work directory, so a full pipe can never stall a server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import procstat

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
_KEYTURN_READY = re.compile(r"keyturn listening on (\S+:\d+)")
_BASELINE_READY = re.compile(r"baseline listening on (\S+:\d+)")


class ServerError(RuntimeError):
    """A server did not start, or died."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        return procstat.rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ServerError(
                f"{self.name} exited with {self.process.returncode}; log:\n{_tail(self.log_path)}"
            )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a graceful stop), then SIGKILL if it takes longer than ``timeout``."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _start(
    name: str,
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    ready: re.Pattern[str],
    timeout: float,
) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = ready.search(log_path.read_text(errors="replace"))
        if match:
            return Server(name, process, match.group(1), log_path)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        process.wait(5)
    raise ServerError(f"{name} did not start within {timeout:.0f} s; log:\n{_tail(log_path)}")


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "PYTHON"))}
    env.update(extra)
    return env


def start_keyturn(
    data_dir: Path,
    master_key: str,
    log_path: Path,
    extra_args: tuple[str, ...] = (),
    timeout: float = 300.0,
) -> Server:
    """``keyturn serve`` as documented: MASTER_KEY set, warnings only, no caller limit.
    No HTTP listener unless ``extra_args`` asks for one (the default would bind 8080).

    The timeout is long because a first start on a large seeded store may take a while.
    """
    argv = [
        str(VENV_BIN / "keyturn"),
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--caller-rate-limit",
        "0",
        *(() if "--http-listen" in extra_args else ("--http-listen", "off")),
        *extra_args,
    ]
    env = _env({"MASTER_KEY": master_key, "LOG_LEVEL": "warning"})
    return _start("keyturn", argv, env, log_path, _KEYTURN_READY, timeout)


def start_baseline(
    module: str, log_path: Path, extra_args: tuple[str, ...] = (), timeout: float = 60.0
) -> Server:
    """``python -m bench.<module>``: echo_server or fanout_server."""
    argv = [sys.executable, "-m", f"bench.{module}", "--listen", "127.0.0.1:0", *extra_args]
    return _start(module, argv, _env({}), log_path, _BASELINE_READY, timeout)


def admin_token(data_dir: Path) -> str:
    return (data_dir / "admin.token").read_text().strip()
