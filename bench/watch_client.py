"""The subscribers of the fan-out benchmark, in a process of their own.

Opens ``--streams`` server streams spread over ``--channels`` channels (one connection
each), waits until every stream has its first message (Keyturn's SNAPSHOT_COMPLETE, the
baseline's READY) and prints one JSON line: how many are ready and how many failed,
by status code. It then waits for the broadcast and prints a second JSON line with the
CLOCK_MONOTONIC time at which each stream received it (the clock is system-wide, so
the parent compares it with the time it triggered the event). Streams stay open until
every one has the event or ``--wait`` seconds have passed.

Run as ``python -m bench.watch_client --target keyturn|baseline --address HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.baseline import load
from keyturn.v1 import events_pb2, handles_pb2_grpc

CONNECT_TIMEOUT = 60.0


@dataclass
class Tally:
    """What the streams of this process have seen."""

    expected: int
    ready: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    #: Streams that were ready, then ended before the event came.
    lost: int = 0
    times: list[float] = field(default_factory=list)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    served: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        if self.ready + sum(self.failed.values()) >= self.expected:
            self.settled.set()
        if self.settled.is_set() and len(self.times) + self.lost >= self.ready:
            self.served.set()


@dataclass(frozen=True)
class Target:
    """How to open one stream, and which messages mean "ready" and "the event"."""

    open: Callable[[grpc.aio.Channel], Any]
    is_ready: Callable[[Any], bool]
    is_event: Callable[[Any], bool]


def keyturn_target(token: str, handle_id: str) -> Target:
    metadata = (("authorization", f"Bearer {token}"),)
    request = events_pb2.WatchExpiringRequest(
        ids=[handle_id], kinds=[events_pb2.EVENT_KIND_REVOKED]
    )

    def open_stream(channel: grpc.aio.Channel) -> Any:
        stub = handles_pb2_grpc.HandleServiceStub(channel)
        return stub.WatchExpiring(request, metadata=metadata)

    return Target(
        open_stream,
        lambda m: m.kind == events_pb2.EVENT_KIND_SNAPSHOT_COMPLETE,
        lambda m: m.kind == events_pb2.EVENT_KIND_REVOKED,
    )


def baseline_target() -> Target:
    messages, services = load()

    def open_stream(channel: grpc.aio.Channel) -> Any:
        return services.FanoutStub(channel).Subscribe(messages.SubscribeRequest())

    return Target(
        open_stream,
        lambda m: m.kind == messages.Notice.KIND_READY,
        lambda m: m.kind == messages.Notice.KIND_EVENT,
    )


async def _stream(target: Target, channel: grpc.aio.Channel, tally: Tally) -> None:
    call = target.open(channel)
    ready = False
    try:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                if ready:
                    tally.lost += 1
                else:
                    tally.failed["EOF"] += 1
                tally.check()
                return
            if not ready and target.is_ready(message):
                ready = True
                tally.ready += 1
            elif ready and target.is_event(message):
                tally.times.append(time.monotonic())
                tally.check()
                await asyncio.Event().wait()  # hold the stream open until cancelled
            tally.check()
    except grpc.aio.AioRpcError as error:
        if ready:
            tally.lost += 1
        else:
            tally.failed[error.code().name] += 1
        tally.check()
    except asyncio.CancelledError:
        call.cancel()
        raise


async def run(args: argparse.Namespace) -> None:
    target = (
        keyturn_target(args.token, args.handle_id)
        if args.target == "keyturn"
        else baseline_target()
    )
    channels = [
        # A channel of its own per connection: no subchannel sharing between them.
        grpc.aio.insecure_channel(
            args.address, options=[("grpc.use_local_subchannel_pool", 1), ("bench.channel", i)]
        )
        for i in range(args.channels)
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT)
    tally = Tally(args.streams)
    started = time.monotonic()
    tasks = [
        asyncio.create_task(_stream(target, channels[i % len(channels)], tally))
        for i in range(args.streams)
    ]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.settled.wait(), args.wait)
    _emit(
        {
            "ready": tally.ready,
            "failed": dict(tally.failed),
            "open_seconds": round(time.monotonic() - started, 3),
        }
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.served.wait(), args.wait)
    _emit({"received": len(tally.times), "lost": tally.lost, "times": tally.times})
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(None)


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", choices=("keyturn", "baseline"), required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--token", default="")
    parser.add_argument("--handle-id", default="")
    parser.add_argument("--wait", type=float, default=120.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
