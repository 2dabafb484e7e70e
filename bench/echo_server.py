"""The unary baseline: a bare grpc.aio server with one echo method, nothing else.

Run as ``python -m bench.echo_server --listen 127.0.0.1:0``; it prints
``baseline listening on HOST:PORT`` once it serves, and stops on SIGTERM.

With ``--wait-ms N`` each call waits N ms on the event loop before it answers, as a call
waits for its commit: the reference for what waiting alone costs grpc.aio.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc

from bench.baseline import listen_argument, load, wait_argument
from keyturn_server.process import collector

messages, services = load()


class Echo(services.EchoServicer):  # type: ignore[misc, name-defined]
    def __init__(self, wait: float) -> None:
        self._wait = wait

    async def Echo(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if self._wait:
            await asyncio.sleep(self._wait)
        return request


async def serve(listen: str, wait: float) -> None:
    server = grpc.aio.server()
    services.add_EchoServicer_to_server(Echo(wait), server)
    port = server.add_insecure_port(listen)
    await server.start()
    collector.settle_after_start()  # as keyturn serve does: like compared with like
    print(f"baseline listening on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve(listen_argument(), wait_argument()))
