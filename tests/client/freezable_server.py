"""``keyturn serve`` whose event loop a SIGUSR1 blocks for KEYTURN_TEST_FREEZE_SECONDS:
a stuck server (a deadlock, a callback that never yields). Its gRPC core keeps the
connection up and answers pings, as a wedged real server's does; only its streams go
silent. Used as a ServerProcess prefix: ``python freezable_server.py python -m
keyturn_server serve ...``."""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time
from types import FrameType


def freeze(signum: int, frame: FrameType | None) -> None:
    # Runs on the main thread, which runs the event loop: nothing else of the server's
    # Python code runs meanwhile (time.sleep lets the gRPC core's threads go on).
    time.sleep(float(os.environ.get("KEYTURN_TEST_FREEZE_SECONDS", "8")))


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, freeze)
    python, dash_m, module, *arguments = sys.argv[1:]
    assert dash_m == "-m", sys.argv
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
