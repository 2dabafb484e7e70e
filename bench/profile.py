"""Where the server's time goes under ValidateHandle load: py-spy samples the running
server while ghz drives it, and the stacks are folded into the top costs.

Only samples of the thread holding the GIL are kept (py-spy --gil): a Python server is
bound by interpreter time, and this shows who spends it, and how busy the GIL is.

py-spy is installed from PyPI with pip into the gitignored ``tools/bin/`` when missing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import ghz
from bench.ghz import Call, Load, LoadResult
from bench.servers import Server

PY_SPY_VERSION = "0.4.3"
PY_SPY_DIR = ghz.TOOLS_BIN / f"py-spy-{PY_SPY_VERSION}"
PY_SPY = PY_SPY_DIR / "bin" / "py-spy"
_LINE = re.compile(r":\d+\)$")
TOP = 12
RATE = 200


class ProfileError(RuntimeError):
    """py-spy is missing and cannot be installed, or could not attach."""


def ensure_py_spy() -> Path:
    if PY_SPY.exists():
        return PY_SPY
    print(f"installing py-spy {PY_SPY_VERSION} into {PY_SPY_DIR} (pip, once) ...", flush=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--target",
            str(PY_SPY_DIR),
            f"py-spy=={PY_SPY_VERSION}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not PY_SPY.exists():
        raise ProfileError(f"pip install py-spy failed: {done.stderr.strip()[-1000:]}")
    return PY_SPY


@dataclass
class Profile:
    samples: int
    load: LoadResult
    #: Samples / (rate x seconds): the share of wall time some thread held the GIL.
    gil_busy: float = 0.0
    #: Share of samples per thread: the event loop, the SQLite writer, the rest.
    threads: dict[str, float] = field(default_factory=dict)
    #: Functions by the share of samples they are on the stack of (inclusive).
    inclusive: list[tuple[str, float]] = field(default_factory=list)
    #: Functions by the share of samples they are the innermost frame of (self).
    own: list[tuple[str, float]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "gil_busy": self.gil_busy,
            "load": self.load.as_json(),
            "threads": self.threads,
            "inclusive": self.inclusive,
            "self": self.own,
        }


def _function(frame: str) -> str:
    """``decide (keyturn_server/domain/handles.py:284)`` -> ``decide (.../handles.py)``."""
    return _LINE.sub(")", frame)


def _thread(stack: list[str]) -> str:
    text = ";".join(stack)
    if "concurrent/futures/thread.py" in text:
        return "worker threads (SQLite BEGIN and COMMIT)"
    if "run_forever" in text:
        return "event loop thread"
    return "other threads"


def _counted(frame: str) -> bool:
    """Frames worth listing as inclusive costs: the server's and grpc's Python code,
    without the entry points that are on every stack of a thread."""
    if "keyturn_server/cli/" in frame:
        return False
    return "keyturn_server/" in frame or "grpc/" in frame


def stacks(raw: str) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw (collapsed stack) output: each stack, outermost frame first, with
    line numbers dropped, and its sample count."""
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if stack_text and count_text.isdigit():
            yield [_function(f) for f in stack_text.split(";")], int(count_text)


def fold(raw: str, load: LoadResult, seconds: float) -> Profile:
    """Fold py-spy's raw (collapsed stack) output."""
    total = 0
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, count in stacks(raw):
        total += count
        threads[_thread(stack)] += count
        own[stack[-1]] += count
        for frame in set(stack):
            if _counted(frame):
                inclusive[frame] += count

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, round(c / total, 4)) for name, c in counter.most_common(n)] if total else []

    return Profile(
        samples=total,
        load=load,
        gil_busy=round(total / (RATE * seconds), 3) if seconds else 0.0,
        threads={name: round(c / total, 4) for name, c in threads.most_common()} if total else {},
        inclusive=shares(inclusive, TOP),
        own=shares(own, TOP),
    )


def record(server: Server, seconds: float, out: Path, drive: Callable[[], object]) -> str:
    """py-spy's raw stacks of the thread holding the GIL in ``server`` while ``drive``
    (the load, lasting ``seconds``) runs in another thread."""
    spy = ensure_py_spy()
    # py-spy starts first and stops before the load does: every sample is under load.
    duration = max(1, int(seconds) - 1)
    recorder = subprocess.Popen(
        [
            str(spy),
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(duration),
            "--rate",
            str(RATE),
            "--gil",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    driver = threading.Thread(target=drive)
    driver.start()
    log, _ = recorder.communicate(timeout=seconds + 60)
    driver.join()
    if recorder.returncode != 0 or not out.exists():
        raise ProfileError(f"py-spy failed: {log.strip()[-1000:]}")
    return out.read_text()


def sample(server: Server, call: Call, load: Load, seconds: float, workdir: Path) -> Profile:
    """Drive ``call`` with ghz for ``seconds`` while py-spy records the server."""
    results: list[LoadResult] = []
    raw = record(
        server,
        seconds,
        workdir / "py-spy.txt",
        lambda: results.append(
            ghz.run(call, replace(load, seconds=seconds, warmup=0.0), server.address, workdir)
        ),
    )
    return fold(raw, results[0], max(1, int(seconds) - 1))
