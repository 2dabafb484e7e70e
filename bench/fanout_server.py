"""The fan-out baseline: a bare grpc.aio server whose streams each hold one
asyncio.Queue; Trigger builds one message and puts it in every queue.

Run as ``python -m bench.fanout_server --listen 127.0.0.1:0``; it prints
``baseline listening on HOST:PORT`` once it serves, and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bench.baseline import listen_argument, load

messages, services = load()
QUEUE_SIZE = 1024


class Fanout(services.FanoutServicer):  # type: ignore[misc, name-defined]
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Any]] = set()
        self._sequence = 0

    async def Subscribe(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield messages.Notice(kind=messages.Notice.KIND_READY)
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)

    async def Trigger(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self._sequence += 1
        notice = messages.Notice(
            kind=messages.Notice.KIND_EVENT,
            sequence=self._sequence,
            payload=b"x" * request.payload_size,
        )
        for queue in self._queues:
            queue.put_nowait(notice)
        return messages.TriggerResponse(subscribers=len(self._queues))


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 50_000)])
    services.add_FanoutServicer_to_server(Fanout(), server)
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"baseline listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve(listen_argument()))
