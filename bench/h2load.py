"""HTTP/1.1 load with h2load (nghttp2's load tool, C), so that the client never competes
with the server for the interpreter: ``h2load --h1`` with one request in flight per
connection, as many connections as the gRPC suites keep calls in flight.

h2load sends one body for every request; the HTTP suite therefore validates one handle.
It comes with Debian's ``nghttp2-client``, installed here when missing and allowed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ghz import Load, LoadError

_FINISHED = re.compile(r"finished in ([\d.]+(?:us|ms|s)), ([\d.]+) req/s")
_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded")
_LATENCY = re.compile(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)")


def ensure_h2load() -> str:
    found = shutil.which("h2load")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing h2load (Debian nghttp2-client) ...", flush=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "nghttp2-client"],
            check=False,
            capture_output=True,
        )
        found = shutil.which("h2load")
        if found:
            return found
    raise LoadError("h2load is missing: install Debian's nghttp2-client (apt-get install)")


@dataclass(frozen=True)
class HttpResult:
    ok: int
    errors: int
    seconds: float
    mean_ms: float
    max_ms: float
    codes: dict[str, int]

    @property
    def rps(self) -> float:
        """Successful (2xx) requests per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "mean_ms": round(self.mean_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "codes": self.codes,
        }


def _ms(text: str) -> float:
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float("nan")


def post(
    url: str, body: Path, headers: dict[str, str], load: Load, count: int | None = None
) -> HttpResult:
    """POST ``body`` to ``url`` for ``load.seconds``, or exactly ``count`` times. A timed
    run stops with requests in flight that it does not count; a counted one waits for all.
    """
    span = ["-n", str(count)] if count else ["-D", f"{max(1, round(load.seconds * 1000))}ms"]
    argv = [
        ensure_h2load(),
        "--h1",
        "-c",
        str(min(load.concurrency, count or load.concurrency)),
        *span,
        "-d",
        str(body),
        "-H",
        "content-type: application/json",
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=False)
    out = done.stdout
    finished, codes = _FINISHED.search(out), _CODES.search(out)
    if done.returncode != 0 or finished is None or codes is None:
        raise LoadError(f"h2load failed ({done.returncode}): {(out + done.stderr)[-2000:]}")
    latency = _LATENCY.search(out)
    two, three, four, five = (int(n) for n in codes.groups())
    requests = _REQUESTS.search(out)
    failed = int(requests.group(2)) - int(requests.group(3)) if requests else 0
    return HttpResult(
        ok=two,
        errors=three + four + five + failed,
        seconds=_ms(finished.group(1)) / 1000,
        mean_ms=_ms(latency.group(3)) if latency else float("nan"),
        max_ms=_ms(latency.group(2)) if latency else float("nan"),
        codes={"2xx": two, "3xx": three, "4xx": four, "5xx": five},
    )
