"""WatchExpiring fan-out: N open subscriber streams on one server, one event, and the
time until every subscriber has it, plus the server's memory per open stream.

The subscribers live in separate client processes (bench.watch_client). The baseline
is the same measurement against bench.fanout_server.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from bench import baseline
from bench.servers import REPO, Server
from keyturn.v1 import handles_pb2, handles_pb2_grpc

#: Bytes of filler in the baseline's event: about a Keyturn REVOKED event with its
#: handle snapshot on the wire.
BASELINE_EVENT_BYTES = 300
SETTLE_SECONDS = 1.0


class FanoutError(RuntimeError):
    """The subscribers could not be opened or did not answer."""


@dataclass(frozen=True)
class FanoutResult:
    subscribers: int
    ready: int
    failed: dict[str, int]
    received: int
    open_seconds: float
    #: From the trigger to the first / median / last subscriber having the event.
    first_ms: float
    p50_ms: float
    last_ms: float
    rss_before_kib: int
    rss_after_kib: int

    @property
    def kib_per_subscriber(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(1, self.ready)

    @property
    def all_served(self) -> bool:
        return self.ready == self.subscribers and self.received == self.ready

    def as_json(self) -> dict[str, Any]:
        return {
            "subscribers": self.subscribers,
            "ready": self.ready,
            "failed": self.failed,
            "received": self.received,
            "open_seconds": self.open_seconds,
            "first_ms": round(self.first_ms, 1),
            "p50_ms": round(self.p50_ms, 1),
            "last_ms": round(self.last_ms, 1),
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "kib_per_subscriber": round(self.kib_per_subscriber, 2),
        }


@dataclass(frozen=True)
class Subscribers:
    """How to spread the streams: client processes, and channels in each."""

    processes: int = 2
    channels: int = 8


def keyturn_trigger(address: str, token: str, handle_id: str) -> Callable[[], None]:
    """RemoveHandle on a connected channel: the REVOKED event the streams wait for."""
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = handles_pb2_grpc.HandleServiceStub(channel)
    metadata = (("authorization", f"Bearer {token}"),)

    def trigger() -> None:
        try:
            stub.RemoveHandle(
                handles_pb2.RemoveHandleRequest(handle_id=handle_id, reason="fan-out benchmark"),
                metadata=metadata,
                timeout=60,
            )
        finally:
            channel.close()

    return trigger


def baseline_trigger(address: str) -> Callable[[], None]:
    messages, services = baseline.load()
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = services.FanoutStub(channel)

    def trigger() -> None:
        try:
            stub.Trigger(messages.TriggerRequest(payload_size=BASELINE_EVENT_BYTES), timeout=60)
        finally:
            channel.close()

    return trigger


def _spawn(
    target: str, server: Server, streams: int, channels: int, extra: list[str]
) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "bench.watch_client",
        "--target",
        target,
        "--address",
        server.address,
        "--streams",
        str(streams),
        "--channels",
        str(channels),
        *extra,
    ]
    return subprocess.Popen(
        argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )


def _line(process: subprocess.Popen[str], what: str) -> dict[str, Any]:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise FanoutError(f"a subscriber process ended before reporting {what}")
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def measure(
    target: str,
    server: Server,
    count: int,
    spread: Subscribers,
    trigger: Callable[[], None],
    client_args: list[str],
) -> FanoutResult:
    """Open ``count`` streams, wait until all are ready, trigger, collect the times."""
    rss_before = server.rss_kib()
    processes = min(spread.processes, count)
    shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    clients = [
        _spawn(target, server, share, min(spread.channels, share), client_args) for share in shares
    ]
    try:
        ready_lines = [_line(c, "readiness") for c in clients]
        time.sleep(SETTLE_SECONDS)
        server.check_alive()
        rss_after = server.rss_kib()
        triggered = time.monotonic()
        trigger()
        result_lines = [_line(c, "results") for c in clients]
    finally:
        for client in clients:
            try:
                client.wait(30)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait(5)
    failed: Counter[str] = Counter()
    for line in ready_lines:
        failed.update(line["failed"])
    delays = sorted((t - triggered) * 1000 for line in result_lines for t in line["times"])
    nan = float("nan")
    return FanoutResult(
        subscribers=count,
        ready=sum(line["ready"] for line in ready_lines),
        failed=dict(failed),
        received=len(delays),
        open_seconds=max(line["open_seconds"] for line in ready_lines),
        first_ms=delays[0] if delays else nan,
        p50_ms=statistics.median(delays) if delays else nan,
        last_ms=delays[-1] if delays else nan,
        rss_before_kib=rss_before,
        rss_after_kib=rss_after,
    )
