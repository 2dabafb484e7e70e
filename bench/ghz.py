"""Load generation with ghz (a Go gRPC load tool), so that the client never competes
with the server for the Python interpreter.

ghz is built from source with ``go install`` at a pinned version into the gitignored
``tools/bin/`` of the repository the first time it is needed.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import REPO

GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz"
GHZ_VERSION = "v0.120.0"
TOOLS_BIN = REPO / "tools" / "bin"
GHZ = TOOLS_BIN / "ghz"
KEYTURN_PROTO = REPO / "proto"
#: google/api/annotations.proto, which the Keyturn protos import for their HTTP rules.
GOOGLEAPIS_PROTO = REPO / "third_party" / "googleapis"


class LoadError(RuntimeError):
    """ghz is missing and cannot be built, or a run failed."""


@functools.cache
def ensure_ghz() -> Path:
    """The ghz binary, built with ``go install`` when it is not there yet (a few minutes)."""
    if GHZ.exists() and _version_ok():
        return GHZ
    go = shutil.which("go")
    if go is None:
        raise LoadError("ghz is missing and there is no Go toolchain to build it (need `go`)")
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    print(f"installing ghz {GHZ_VERSION} into {TOOLS_BIN} (go install, once) ...", flush=True)
    env = dict(os.environ, GOBIN=str(TOOLS_BIN), GOFLAGS="-buildvcs=false")
    done = subprocess.run(
        [go, "install", f"{GHZ_MODULE}@{GHZ_VERSION}"],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not GHZ.exists():
        raise LoadError(f"go install {GHZ_MODULE}@{GHZ_VERSION} failed:\n{done.stderr[-3000:]}")
    return GHZ


def _version_ok() -> bool:
    """The binary was built from the pinned version (``go version -m`` reads its build
    info; without Go, any ghz already there is taken as is)."""
    go = shutil.which("go")
    if go is None:
        return True
    done = subprocess.run(
        [go, "version", "-m", str(GHZ)], capture_output=True, text=True, check=False
    )
    return f"{GHZ_MODULE.split('/cmd/')[0]}\t{GHZ_VERSION}" in done.stdout


@dataclass(frozen=True)
class Load:
    """How hard to push: ``connections`` HTTP/2 connections with ``streams`` calls in
    flight on each, for ``seconds`` after a ``warmup`` that is not counted."""

    connections: int = 16
    streams: int = 8
    seconds: float = 5.0
    warmup: float = 0.5
    #: CPUs to pin ghz to (taskset -c), e.g. "1"; empty: wherever the kernel likes.
    cpus: str = ""

    @property
    def concurrency(self) -> int:
        return self.connections * self.streams

    def describe(self) -> str:
        pinned = f", ghz on CPU {self.cpus}" if self.cpus else ""
        return (
            f"{self.connections} connections x {self.streams} streams, {self.seconds:g} s{pinned}"
        )


@dataclass(frozen=True)
class Call:
    """One RPC to repeat: its full name, its proto, and the request(s) in proto JSON. With
    several requests ghz sends them round robin."""

    method: str
    requests: Sequence[Mapping[str, Any]]
    proto: Path
    import_paths: Sequence[Path] = (KEYTURN_PROTO, GOOGLEAPIS_PROTO)
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadResult:
    ok: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    codes: dict[str, int]
    error_samples: dict[str, int]
    #: For rounds combined: the median of their rates (a total over the summed seconds
    #: would weigh the rounds differently).
    median_rps: float | None = None

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        if self.median_rps is not None:
            return self.median_rps
        return self.ok / self.seconds if self.seconds else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "rps": round(self.rps, 1),
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "codes": self.codes,
            "error_samples": self.error_samples,
        }


def run(call: Call, load: Load, address: str, workdir: Path) -> LoadResult:
    """One measured run (callers warm up with a run of their own); raises LoadError if
    ghz itself fails."""
    data_file = workdir / "ghz-data.json"
    payload: Any = list(call.requests) if len(call.requests) > 1 else call.requests[0]
    data_file.write_text(json.dumps(payload))
    return _parse(_ghz(call, load, load.seconds, address, data_file))


def _ghz(call: Call, load: Load, seconds: float, address: str, data_file: Path) -> dict[str, Any]:
    argv = [
        *(("taskset", "-c", load.cpus) if load.cpus else ()),
        str(ensure_ghz()),
        "--insecure",
        f"--proto={call.proto}",
        f"--import-paths={','.join(str(p) for p in call.import_paths)}",
        f"--call={call.method}",
        f"--data-file={data_file}",
        f"--metadata={json.dumps(dict(call.metadata))}",
        f"--connections={load.connections}",
        f"--concurrency={load.concurrency}",
        f"--duration={int(seconds * 1000)}ms",
        "--duration-stop=wait",
        "--timeout=120s",
        "--cpus=1",
        "--disable-template-functions",
        "--disable-template-data",
        "--format=json",
        address,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 180)
    if not done.stdout.strip().startswith("{"):
        raise LoadError(f"ghz failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _parse(report: dict[str, Any]) -> LoadResult:
    codes = {str(k): int(v) for k, v in (report.get("statusCodeDistribution") or {}).items()}
    ok = codes.get("OK", 0)
    percentiles = {
        int(p["percentage"]): float(p["latency"]) / 1e6
        for p in report.get("latencyDistribution") or []
    }
    return LoadResult(
        ok=ok,
        errors=sum(codes.values()) - ok,
        seconds=float(report.get("total", 0)) / 1e9,
        p50_ms=percentiles.get(50, float("nan")),
        p99_ms=percentiles.get(99, float("nan")),
        codes=codes,
        error_samples={
            str(k)[:200]: int(v)
            for k, v in list((report.get("errorDistribution") or {}).items())[:5]
        },
    )
